// chainio_impair DEV [--loss PPM] [--corrupt PPM] [--dup PPM] [--udp-only] | DEV --off
//
// Attaches tests/net/impair.bpf.c to DEV's tc egress (the filter stays after this program exits,
// until --off or until the network namespace goes) and prints one JSON line. Test-only: the
// stand-in for netem, whose kernel module this machine lacks. Rates are in parts per million.
#include <bpf/libbpf.h>
#include <net/if.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "impair.skel.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s DEV [--loss PPM] [--corrupt PPM] [--dup PPM] "
                             "[--udp-only] | DEV --off\n", argv[0]);
        return 2;
    }
    const unsigned ifindex = if_nametoindex(argv[1]);
    if (!ifindex) {
        std::fprintf(stderr, "no interface %s\n", argv[1]);
        return 1;
    }
    bpf_tc_hook hook{};
    hook.sz = sizeof(hook);
    hook.ifindex = static_cast<int>(ifindex);
    hook.attach_point = BPF_TC_EGRESS;
    if (argc == 3 && std::strcmp(argv[2], "--off") == 0) {
        hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_EGRESS | BPF_TC_INGRESS);
        const int err = bpf_tc_hook_destroy(&hook);
        std::printf("{\"removed\": %s}\n", err ? "false" : "true");
        return 0;
    }
    impair_bpf* skel = impair_bpf__open();
    if (!skel) return 1;
    skel->rodata->self_ifindex = ifindex;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> unsigned {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
        };
        if (a == "--loss") skel->rodata->loss_ppm = value();
        else if (a == "--corrupt") skel->rodata->corrupt_ppm = value();
        else if (a == "--dup") skel->rodata->dup_ppm = value();
        else if (a == "--udp-only") skel->rodata->udp_only = 1;
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    if (int err = impair_bpf__load(skel); err) {
        std::fprintf(stderr, "load: %s\n", std::strerror(-err));
        return 1;
    }
    int err = bpf_tc_hook_create(&hook);
    if (err && err != -EEXIST) {
        std::fprintf(stderr, "tc hook on %s: %s\n", argv[1], std::strerror(-err));
        return 1;
    }
    bpf_tc_opts opts{};
    opts.sz = sizeof(opts);
    opts.prog_fd = bpf_program__fd(skel->progs.chainio_impair);
    opts.flags = BPF_TC_F_REPLACE;
    opts.handle = 1;
    opts.priority = 1;
    if ((err = bpf_tc_attach(&hook, &opts))) {
        std::fprintf(stderr, "tc attach on %s: %s\n", argv[1], std::strerror(-err));
        return 1;
    }
    std::printf("{\"dev\": \"%s\", \"loss_ppm\": %u, \"corrupt_ppm\": %u, \"dup_ppm\": %u}\n",
                argv[1], skel->rodata->loss_ppm, skel->rodata->corrupt_ppm, skel->rodata->dup_ppm);
    impair_bpf__destroy(skel);  // the tc filter keeps its own reference to the program
    return 0;
}
