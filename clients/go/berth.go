// Package berth connects Go programs to berthd (or containerd) over its unix socket. The API
// itself is the generated code under api/, produced from the project's proto/ by ./build.
//
// Everything here is what a client of containerd's v1 API needs beyond the generated stubs: a
// connection with gRPC's default options, and the two headers that scope calls.
package berth

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// NamespaceHeader names the namespace a call acts in; berthd refuses namespaced calls without it.
const NamespaceHeader = "containerd-namespace"

// LeaseHeader names a lease that holds what a call creates (content, snapshots) until the lease is
// deleted, so garbage collection cannot take it while a client is still assembling an image.
const LeaseHeader = "containerd-lease"

// Dial returns a client connection to the unix socket at path. It only adds plaintext transport
// credentials (a unix socket has no TLS) to gRPC's defaults; the connection is made lazily.
func Dial(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// WithNamespace returns a context whose calls act in namespace ns.
func WithNamespace(ctx context.Context, ns string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, NamespaceHeader, ns)
}

// WithLease returns a context whose calls put what they create under lease id.
func WithLease(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, LeaseHeader, id)
}
