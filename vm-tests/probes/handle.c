/* open_by_handle_at on the root of the filesystem holding argv[1]: with
 * CAP_DAC_READ_SEARCH this reaches any inode on it, hidden or not (the
 * "shocker" escape). Prints "handle: opened" or "handle: refused <errno>". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    struct file_handle *h = malloc(sizeof(*h) + MAX_HANDLE_SZ);
    h->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    if (argc < 2 || name_to_handle_at(AT_FDCWD, argv[1], h, &mount_id, 0) < 0) {
        printf("handle: no handle %d\n", errno);
        return 0;
    }
    int mfd = open(argv[1], O_RDONLY | O_DIRECTORY);
    int fd = open_by_handle_at(mfd, h, O_RDONLY);
    if (fd < 0)
        printf("handle: refused %d\n", errno);
    else
        printf("handle: opened\n");
    return 0;
}
