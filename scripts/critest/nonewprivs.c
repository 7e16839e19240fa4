/* The program of the critest fixtures' nonewprivs image (Kubernetes' e2e nonewprivs): installed
 * setuid root and run as a non-root user, it reports the effective uid it got, 0 unless
 * no_new_privs kept the setuid bit from taking effect. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
  printf("Effective uid: %d\n", (int)geteuid());
  return 0;
}
