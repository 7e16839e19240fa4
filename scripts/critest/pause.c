/* The pause process of the critest fixtures' pause images (the sandbox container of a runtime
 * that runs one, e.g. the containerd peer): PID 1 of a pod, holding its namespaces. It reaps
 * every orphan re-parented to it and exits 0 on SIGINT/SIGTERM. Built static, so the image needs
 * no libc. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  int saved = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = stop;
  if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
    return 1;
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL) < 0)
    return 2;
  for (;;)
    pause();
}
