/* The VM floor's init (PID 1 of a throwaway initramfs): loads the vsock
 * modules listed in /lib/modules/load-order, connects to the host (CID 2)
 * on vsock port 1024, writes one byte, then `bench.bytes=N` zero bytes (the
 * raw vsock stream floor), and powers the VM off. Built static by kata-bench. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static void load_modules(void) {
    FILE *f = fopen("/lib/modules/load-order", "r");
    char line[512];
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        syscall(SYS_finit_module, fd, "", 0);
        close(fd);
    }
    fclose(f);
}

static unsigned long long bytes_to_send(void) {
    char buf[4096];
    unsigned long long n = 0;
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return 0;
    buf[r] = 0;
    char *p = strstr(buf, "bench.bytes=");
    if (p)
        n = strtoull(p + strlen("bench.bytes="), NULL, 10);
    return n;
}

int main(void) {
    static char block[1 << 16];
    struct sockaddr_vm addr = {0};
    unsigned long long left;
    int s = -1;

    mkdir("/proc", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    load_modules();
    left = bytes_to_send();
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_HOST;
    addr.svm_port = 1024;
    /* A connect sent before the device is live is lost and would wait out
     * the default 2 s connect timeout: retry after 20 ms instead (250 ms
     * once that has failed 50 times, for a slow host). */
    for (int i = 0; i < 3000; i++) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = i < 50 ? 20000 : 250000};
        s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s >= 0)
            setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv);
        if (s >= 0 && connect(s, (struct sockaddr *)&addr, sizeof addr) == 0)
            break;
        if (s >= 0)
            close(s);
        s = -1;
        usleep(1000);
    }
    if (s >= 0) {
        if (write(s, "!", 1) == 1) {
            while (left > 0) {
                size_t n = left < sizeof block ? left : sizeof block;
                ssize_t w = write(s, block, n);
                if (w <= 0)
                    break;
                left -= (unsigned long long)w;
            }
        }
        /* Wait for the host to close its end (it does once all bytes are
         * in): powering off right away can lose the last bytes in flight. */
        shutdown(s, SHUT_WR);
        while (read(s, block, sizeof block) > 0)
            ;
        close(s);
    }
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
