# BPF object -> skeleton pipeline.
#
#   chainio_bpf_skeleton(<name> <source.bpf.c>
#                        [DEPENDS <file>...]
#                        [INCLUDE_DIRECTORIES <dir>...])
#
# Compiles <source> with `clang -g -O2 -target bpf` into <name>.bpf.o, links it with
# `bpftool gen object` (drops DWARF, keeps BTF) and generates <name>.skel.h with
# `bpftool gen skeleton ... name <name>_bpf`: the skeleton embeds the object, so nothing
# is searched for at run time. Header dependencies come from clang's depfile; DEPENDS
# adds explicit ones (shared headers).
#
# Defines:
#   target   <name>_skel             custom target producing the header; add_dependencies()
#                                    on it from whatever includes <name>.skel.h
#   variable <name>_SKEL_INCLUDE_DIR (parent scope) directory holding <name>.skel.h
#   variable <name>_SKEL_HEADER      (parent scope) full path of <name>.skel.h
#   variable <name>_BPF_OBJECT       (parent scope) full path of the linked <name>.bpf.o
#
# Cache variables CHAINIO_BPF_CLANG and CHAINIO_BPFTOOL override the tools found.
include_guard(GLOBAL)

find_program(CHAINIO_BPF_CLANG
    NAMES clang clang-20 clang-19 clang-18 clang-17 clang-16 clang-15 clang-14 clang-13
          clang-12 clang-11
    DOC "clang used to compile BPF programs (-target bpf)")
find_program(CHAINIO_BPFTOOL
    NAMES bpftool
    PATHS /usr/sbin /sbin /usr/local/sbin
    DOC "bpftool used to generate BPF skeletons")

if(NOT CHAINIO_BPF_CLANG)
    message(FATAL_ERROR
        "ChainIO: clang not found; it is needed to compile bpf/*.bpf.c (-target bpf). "
        "Install clang (Debian: apt-get install clang) "
        "or set -DCHAINIO_BPF_CLANG=/path/to/clang.")
endif()
if(NOT CHAINIO_BPFTOOL)
    message(FATAL_ERROR
        "ChainIO: bpftool not found; it is needed to generate BPF skeletons. "
        "Install bpftool (Debian: apt-get install bpftool) "
        "or set -DCHAINIO_BPFTOOL=/path/to/bpftool.")
endif()

# Probe once per pair of tools (re-probed when either cache path changes).
if(NOT "${CHAINIO_BPF_TOOLS_PROBED}" STREQUAL "${CHAINIO_BPF_CLANG};${CHAINIO_BPFTOOL}")
    execute_process(
        COMMAND ${CHAINIO_BPFTOOL} version
        RESULT_VARIABLE _chainio_rc OUTPUT_VARIABLE _chainio_out ERROR_VARIABLE _chainio_err)
    if(NOT _chainio_rc EQUAL 0)
        message(FATAL_ERROR
            "ChainIO: ${CHAINIO_BPFTOOL} does not run (${_chainio_rc}): ${_chainio_err}")
    endif()
    string(REGEX MATCH "v[0-9.]+" _chainio_bpftool_version "${_chainio_out}")
    execute_process(
        COMMAND ${CHAINIO_BPF_CLANG} -target bpf -x c -c /dev/null -o /dev/null
        RESULT_VARIABLE _chainio_rc ERROR_VARIABLE _chainio_err)
    if(NOT _chainio_rc EQUAL 0)
        message(FATAL_ERROR
            "ChainIO: ${CHAINIO_BPF_CLANG} cannot compile for -target bpf: ${_chainio_err}")
    endif()
    message(STATUS "ChainIO BPF: clang ${CHAINIO_BPF_CLANG}, "
                   "bpftool ${CHAINIO_BPFTOOL} ${_chainio_bpftool_version}")
    set(CHAINIO_BPF_TOOLS_PROBED "${CHAINIO_BPF_CLANG};${CHAINIO_BPFTOOL}"
        CACHE INTERNAL "clang and bpftool that passed the probe")
endif()

# __TARGET_ARCH_* only matters to bpf_tracing.h, but must match the host.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i.86)$")
    set(CHAINIO_BPF_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
    set(CHAINIO_BPF_ARCH arm64)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^ppc64")
    set(CHAINIO_BPF_ARCH powerpc)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^s390")
    set(CHAINIO_BPF_ARCH s390)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^riscv")
    set(CHAINIO_BPF_ARCH riscv)
else()
    set(CHAINIO_BPF_ARCH ${CMAKE_SYSTEM_PROCESSOR})
endif()

# clang -target bpf does not search the multiarch directory that holds <asm/*.h>.
set(CHAINIO_BPF_SYSTEM_INCLUDES "")
if(CMAKE_LIBRARY_ARCHITECTURE AND EXISTS "/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}")
    list(APPEND CHAINIO_BPF_SYSTEM_INCLUDES "/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}")
endif()

function(chainio_bpf_skeleton name source)
    cmake_parse_arguments(PARSE_ARGV 2 arg "" "" "DEPENDS;INCLUDE_DIRECTORIES")
    if(arg_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "chainio_bpf_skeleton: unknown arguments ${arg_UNPARSED_ARGUMENTS}")
    endif()

    get_filename_component(src "${source}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    get_filename_component(src_dir "${src}" DIRECTORY)
    set(deps "")
    foreach(dep IN LISTS arg_DEPENDS)
        get_filename_component(dep "${dep}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
        list(APPEND deps "${dep}")
    endforeach()

    set(obj_dir "${CMAKE_CURRENT_BINARY_DIR}/bpf_obj")
    set(skel_dir "${CMAKE_CURRENT_BINARY_DIR}/bpf_skel")
    set(raw_obj "${obj_dir}/${name}.raw.bpf.o")
    set(obj "${obj_dir}/${name}.bpf.o")
    set(skel "${skel_dir}/${name}.skel.h")
    file(MAKE_DIRECTORY "${obj_dir}" "${skel_dir}")

    set(includes "-I${src_dir}")
    foreach(dir IN LISTS arg_INCLUDE_DIRECTORIES LIBBPF_INCLUDE_DIRS CHAINIO_BPF_SYSTEM_INCLUDES)
        get_filename_component(dir "${dir}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
        list(APPEND includes "-I${dir}")
    endforeach()
    set(warn -Wall)
    if(CHAINIO_WERROR)
        list(APPEND warn -Werror)
    endif()

    add_custom_command(
        OUTPUT "${raw_obj}"
        COMMAND ${CHAINIO_BPF_CLANG} -g -O2 -target bpf -mcpu=v3
                -D__TARGET_ARCH_${CHAINIO_BPF_ARCH} ${warn} ${includes}
                -MD -MF "${raw_obj}.d" -c "${src}" -o "${raw_obj}"
        DEPENDS "${src}" ${deps}
        DEPFILE "${raw_obj}.d"
        COMMENT "BPF: compiling ${name}.bpf.o"
        VERBATIM)
    # Static linking drops DWARF (smaller embedded ELF) and keeps the BTF libbpf needs.
    add_custom_command(
        OUTPUT "${obj}"
        COMMAND ${CHAINIO_BPFTOOL} gen object "${obj}" "${raw_obj}"
        DEPENDS "${raw_obj}"
        COMMENT "BPF: linking ${name}.bpf.o"
        VERBATIM)
    # Write then rename: a failed run must not leave a truncated header that looks built.
    add_custom_command(
        OUTPUT "${skel}"
        COMMAND ${CHAINIO_BPFTOOL} gen skeleton "${obj}" name ${name}_bpf > "${skel}.tmp"
        COMMAND ${CMAKE_COMMAND} -E rename "${skel}.tmp" "${skel}"
        DEPENDS "${obj}"
        COMMENT "BPF: generating ${name}.skel.h"
        VERBATIM)
    add_custom_target(${name}_skel DEPENDS "${skel}")

    set(${name}_SKEL_INCLUDE_DIR "${skel_dir}" PARENT_SCOPE)
    set(${name}_SKEL_HEADER "${skel}" PARENT_SCOPE)
    set(${name}_BPF_OBJECT "${obj}" PARENT_SCOPE)
endfunction()
