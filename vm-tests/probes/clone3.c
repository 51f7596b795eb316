/* clone3(CLONE_INTO_CGROUP) into the cgroup directory argv[1] (the cgroup2
 * root): a child born there would leave the run's cgroup and its eBPF
 * redirector. Prints "clone3: escaped" or "clone3: refused <errno>". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int cg = open(argc > 1 ? argv[1] : "/sys/fs/cgroup", O_RDONLY | O_DIRECTORY);
    if (cg < 0) {
        printf("clone3: refused %d (open)\n", errno);
        return 0;
    }
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cg;
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid == 0)
        _exit(0);
    if (pid < 0) {
        printf("clone3: refused %d\n", errno);
        return 0;
    }
    waitpid((pid_t)pid, NULL, 0);
    printf("clone3: escaped\n");
    return 0;
}
