package berth

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestHeaders(t *testing.T) {
	tests := []struct {
		name   string
		ctx    func() context.Context
		header string
		want   []string
	}{
		{"namespace", func() context.Context { return WithNamespace(context.Background(), "ns1") }, NamespaceHeader, []string{"ns1"}},
		{"lease", func() context.Context { return WithLease(context.Background(), "l1") }, LeaseHeader, []string{"l1"}},
		{"lease keeps namespace", func() context.Context {
			return WithLease(WithNamespace(context.Background(), "ns1"), "l1")
		}, NamespaceHeader, []string{"ns1"}},
		{"no namespace by default", context.Background, NamespaceHeader, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md, _ := metadata.FromOutgoingContext(tt.ctx())
			if got := md.Get(tt.header); !slices.Equal(got, tt.want) {
				t.Errorf("%s = %q, want %q", tt.header, got, tt.want)
			}
		})
	}
}

func TestDialIsLazy(t *testing.T) {
	conn, err := Dial("/nonexistent/berthd.sock")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()
	if got := conn.Target(); got != "unix:///nonexistent/berthd.sock" {
		t.Errorf("target = %q", got)
	}
}
