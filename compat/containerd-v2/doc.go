// Package containerdv2 drives berthd with containerd's own v2 Go client
// (github.com/containerd/containerd/v2/client) and its default options: the
// client-side pull and unpack, containers, tasks with FIFO stdio, events and
// leases. berth's e2e test containerd_v2 starts berthd and a registry on
// loopback and runs the compiled test with BERTH_SOCKET and BERTH_IMAGE_REF set.
package containerdv2
