#include "chainio/status.h"

#include <cstring>

namespace chainio {

Status Status::from_errno(const std::string& what) { return from_code(errno, what); }

Status Status::from_code(int code, const std::string& what) {
    if (code == 0) code = EIO;
    return Status(code, what);
}

std::string Status::to_string() const {
    if (is_ok()) return "ok";
    return message_ + " (" + std::strerror(-code_) + ")";
}

}  // namespace chainio
