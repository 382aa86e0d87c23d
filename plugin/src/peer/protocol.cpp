#include "peer/protocol.h"

#include <algorithm>

namespace chainio::peer::proto {

Ranges chunks(const Ranges& extents, uint64_t chunk) {
    Ranges out;
    for (const auto& [off, len] : extents)
        for (uint64_t done = 0; done < len; done += chunk)
            out.emplace_back(off + done, std::min(chunk, len - done));
    return out;
}

nlohmann::json error_reply(const Status& st) {
    return {{"ok", false}, {"errno", st.error_number() ? st.error_number() : EIO},
            {"error", st.message()}};
}

Status reply_status(const nlohmann::json& reply, const std::string& who) {
    if (reply.value("ok", false)) return {};
    int code = EPROTO;
    std::string msg = "malformed reply";
    if (auto e = reply.find("errno"); e != reply.end() && e->is_number_integer())
        code = e->get<int>();
    if (auto m = reply.find("error"); m != reply.end() && m->is_string()) msg = m->get<std::string>();
    return Status(code > 0 ? code : EPROTO, who + ": " + msg);
}

Result<nlohmann::json> parse(const std::vector<uint8_t>& bytes, const std::string& who) {
    auto j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
        return Status(EPROTO, who + ": a message that is not a JSON object");
    return j;
}

}  // namespace chainio::peer::proto
