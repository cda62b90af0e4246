"""Runs a program with some bpf(2) commands answered EINVAL, as a kernel without them answers.

    deny_bpf_command.py CMD[,CMD...] -- PROGRAM [ARGS...]

CMD is a `enum bpf_cmd` number (5: BPF_PROG_LOAD, 28: BPF_LINK_CREATE). The filter is a seccomp
filter installed with Debian's python3-seccomp (run this with /usr/bin/python3); it stays on
across exec, so PROGRAM runs under it.
"""

import errno
import os
import sys

import seccomp


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    commands = [int(c) for c in sys.argv[1].split(",")]
    denied = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for command in commands:
        denied.add_rule(seccomp.ERRNO(errno.EINVAL), "bpf", seccomp.Arg(0, seccomp.EQ, command))
    denied.load()
    os.execv(sys.argv[3], sys.argv[3:])


if __name__ == "__main__":
    main()
