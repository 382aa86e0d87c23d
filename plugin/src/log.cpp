#include "log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

namespace chainio::log {

Level threshold() {
    static const Level level = [] {
        const char* env = std::getenv("CHAINIO_LOG");
        if (env == nullptr) return Level::kWarn;
        if (std::strcmp(env, "debug") == 0) return Level::kDebug;
        if (std::strcmp(env, "info") == 0) return Level::kInfo;
        if (std::strcmp(env, "error") == 0) return Level::kError;
        if (std::strcmp(env, "off") == 0) return Level::kOff;
        return Level::kWarn;
    }();
    return level;
}

void write(Level level, const std::string& message) {
    if (level < threshold()) return;
    std::fprintf(stderr, "chainio: %s\n", message.c_str());
}

void once(Level level, const std::string& key, const std::string& message) {
    static std::mutex mu;
    static std::set<std::string> seen;
    {
        std::lock_guard lock(mu);
        if (!seen.insert(key).second) return;
    }
    write(level, message);
}

}  // namespace chainio::log
