#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace chainio {

/// Outcome of an operation: 0 on success, else a negative errno plus a human-readable message
/// (the way liburing and libxdp report errors). Cheap to copy on success; never throws.
class [[nodiscard]] Status {
public:
    /// The success value.
    Status() = default;
    /// An error; `code` may be given as errno or -errno, it is stored negative.
    Status(int code, std::string message) : code_(code > 0 ? -code : code), message_(std::move(message)) {}

    /// Success.
    static Status ok() { return {}; }
    /// Error from the current `errno`, with `what` as context (e.g. "open(/x)").
    static Status from_errno(const std::string& what);
    /// Error from a negative (or positive) errno value and context.
    static Status from_code(int code, const std::string& what);

    bool is_ok() const { return code_ == 0; }
    explicit operator bool() const { return is_ok(); }
    /// Negative errno, or 0.
    int code() const { return code_; }
    /// Positive errno, or 0.
    int error_number() const { return -code_; }
    const std::string& message() const { return message_; }
    /// "message (strerror)" or "ok".
    std::string to_string() const;

private:
    int code_ = 0;
    std::string message_;
};

/// A value or an error Status. Access to value() on an error is a programming error (aborts).
template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
    Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
        if (std::get<Status>(v_).is_ok()) v_ = Status(EINVAL, "Result built from an ok Status");
    }

    bool is_ok() const { return std::holds_alternative<T>(v_); }
    explicit operator bool() const { return is_ok(); }
    /// The error; Status::ok() when a value is held.
    Status status() const { return is_ok() ? Status::ok() : std::get<Status>(v_); }
    T& value() & { return std::get<T>(v_); }
    const T& value() const& { return std::get<T>(v_); }
    T&& value() && { return std::get<T>(std::move(v_)); }
    T* operator->() { return &value(); }
    T& operator*() & { return value(); }

private:
    std::variant<T, Status> v_;
};

}  // namespace chainio

/// Returns early from the enclosing function with the Status of `expr` if it failed.
#define CHAINIO_RETURN_IF_ERROR(expr)            \
    do {                                         \
        ::chainio::Status chainio_st_ = (expr);  \
        if (!chainio_st_.is_ok()) return chainio_st_; \
    } while (0)
