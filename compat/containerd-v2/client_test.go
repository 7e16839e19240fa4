package containerdv2

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// env reads the variables berth's e2e test sets; without them (a plain
// `go test` outside that harness) there is no berthd to drive.
func env(t *testing.T) (socket, ref string) {
	socket, ref = os.Getenv("BERTH_SOCKET"), os.Getenv("BERTH_IMAGE_REF")
	if socket == "" || ref == "" {
		t.Skip("BERTH_SOCKET and BERTH_IMAGE_REF are set by berth's e2e test containerd_v2")
	}
	return socket, ref
}

func connect(t *testing.T, socket, ns string) (*containerd.Client, context.Context) {
	t.Helper()
	client, err := containerd.New(socket, containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatalf("connect to %s: %v", socket, err)
	}
	t.Cleanup(func() { _ = client.Close() })
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 2*time.Minute)
	t.Cleanup(cancel)
	return client, ctx
}

// TestPullRunDelete is the life of a container as a Go program using
// containerd's client sees it: pull and unpack under a lease, a container on
// a new snapshot with a spec from the image config, a task whose stdout goes
// through FIFOs, its exit seen by Wait and as a /tasks/exit event, and the
// clean-up of task, container and snapshot.
func TestPullRunDelete(t *testing.T) {
	socket, ref := env(t)
	client, ctx := connect(t, socket, "v2client")

	serving, err := client.IsServing(ctx)
	if err != nil || !serving {
		t.Fatalf("IsServing = %v, %v", serving, err)
	}

	// Subscribe before anything runs so the exit cannot be missed.
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	eventsC, eventErrs := client.Subscribe(evCtx, `topic=="/tasks/exit"`)

	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		t.Fatalf("WithLease: %v", err)
	}
	leaseID, _ := leases.FromContext(ctx)

	image, err := client.Pull(ctx, ref, containerd.WithPullUnpack)
	if err != nil {
		t.Fatalf("Pull(%s, WithPullUnpack): %v", ref, err)
	}
	unpacked, err := image.IsUnpacked(ctx, defaults.DefaultSnapshotter)
	if err != nil || !unpacked {
		t.Fatalf("IsUnpacked = %v, %v", unpacked, err)
	}

	// The lease holds what the pull wrote until the image record does.
	resources, err := client.LeasesService().ListResources(ctx, leases.Lease{ID: leaseID})
	if err != nil {
		t.Fatalf("ListResources(%s): %v", leaseID, err)
	}
	kinds := map[string]int{}
	for _, r := range resources {
		kinds[strings.SplitN(r.Type, "/", 2)[0]]++
	}
	if kinds["content"] < 3 || kinds["snapshots"] < 1 {
		t.Fatalf("lease %s holds %v, want the manifest, config and layer blobs and the unpacked snapshot", leaseID, resources)
	}

	id := "v2client-run"
	container, err := client.NewContainer(ctx, id,
		containerd.WithNewSnapshot(id+"-snapshot", image),
		containerd.WithNewSpec(oci.WithImageConfig(image),
			oci.WithProcessArgs("/bin/sh", "-c", "echo hello from the v2 client; exit 7")))
	if err != nil {
		t.Fatalf("NewContainer: %v", err)
	}
	var stdout, stderr bytes.Buffer
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &stdout, &stderr)))
	if err != nil {
		t.Fatalf("NewTask: %v", err)
	}
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var exited containerd.ExitStatus
	select {
	case exited = <-statusC:
	case <-ctx.Done():
		t.Fatalf("no exit status: %v", ctx.Err())
	}
	code, _, err := exited.Result()
	if err != nil || code != 7 {
		t.Fatalf("exit status = %d, %v; want 7", code, err)
	}
	deleted, err := task.Delete(ctx)
	if err != nil {
		t.Fatalf("task Delete: %v", err)
	}
	if deleted.ExitCode() != 7 {
		t.Fatalf("task Delete exit code = %d, want 7", deleted.ExitCode())
	}
	if got := stdout.String(); got != "hello from the v2 client\n" {
		t.Fatalf("stdout = %q (stderr %q)", got, stderr.String())
	}

	select {
	case env := <-eventsC:
		ev, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			t.Fatalf("decode %s: %v", env.Topic, err)
		}
		exit, ok := ev.(*apievents.TaskExit)
		if !ok || exit.ContainerID != id || exit.ExitStatus != 7 || env.Namespace != "v2client" {
			t.Fatalf("event %s in %s = %#v, want TaskExit of %s with status 7", env.Topic, env.Namespace, ev, id)
		}
	case err := <-eventErrs:
		t.Fatalf("event stream: %v", err)
	case <-ctx.Done():
		t.Fatalf("no /tasks/exit event: %v", ctx.Err())
	}

	if err := container.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatalf("container Delete(WithSnapshotCleanup): %v", err)
	}
	if _, err := client.SnapshotService(defaults.DefaultSnapshotter).Stat(ctx, id+"-snapshot"); !errdefs.IsNotFound(err) {
		t.Fatalf("snapshot after WithSnapshotCleanup: err = %v, want NotFound", err)
	}
	if _, err := client.LoadContainer(ctx, id); !errdefs.IsNotFound(err) {
		t.Fatalf("container after Delete: err = %v, want NotFound", err)
	}

	if err := done(ctx); err != nil {
		t.Fatalf("delete lease %s: %v", leaseID, err)
	}
	if err := client.ImageService().Delete(ctx, image.Name(), images.SynchronousDelete()); err != nil {
		t.Fatalf("image Delete: %v", err)
	}
}

// TestServerAndRuntimeInfo reads what containerd 2 added to Introspection:
// the daemon's pid and pid namespace, and the runc runtime's info (runc's
// own `runc features`).
func TestServerAndRuntimeInfo(t *testing.T) {
	socket, _ := env(t)
	client, ctx := connect(t, socket, "v2client-info")

	server, err := client.IntrospectionService().Server(ctx)
	if err != nil {
		t.Fatalf("Server: %v", err)
	}
	wantPid := os.Getenv("BERTH_PID")
	if wantPid == "" || fmt.Sprint(server.Pid) != wantPid || server.Pidns == 0 || server.UUID == "" {
		t.Fatalf("Server = %+v, want pid %s, a pid namespace and a uuid", server, wantPid)
	}

	info, err := client.RuntimeInfo(ctx, "", nil)
	if err != nil {
		t.Fatalf("RuntimeInfo: %v", err)
	}
	if info.Name != "io.containerd.runc.v2" {
		t.Fatalf("RuntimeInfo name = %q", info.Name)
	}
	feat, ok := info.Features.(*features.Features)
	if !ok || feat.OCIVersionMax == "" || len(feat.MountOptions) == 0 {
		t.Fatalf("RuntimeInfo features = %#v, want runc's `runc features`", info.Features)
	}

	// The Transfer service refuses a request without a source, as containerd does.
	_, err = transferapi.NewTransferClient(client.Conn().(grpc.ClientConnInterface)).Transfer(ctx, &transferapi.TransferRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Transfer{}: err = %v, want InvalidArgument", err)
	}
}

// TestTransferPull pulls through the daemon with the v2 client's Transfer (the path
// ctr 2.x and nerdctl take), with progress and an unpack, and checks what it stored.
func TestTransferPull(t *testing.T) {
	socket, ref := env(t)
	client, ctx := connect(t, socket, "v2transfer")

	var mu sync.Mutex
	events := map[string]int{}
	progress := func(p transfer.Progress) {
		mu.Lock()
		defer mu.Unlock()
		events[p.Event]++
	}
	reg, err := registry.NewOCIRegistry(ctx, ref, registry.WithDefaultScheme("http"))
	if err != nil {
		t.Fatalf("NewOCIRegistry: %v", err)
	}
	store := image.NewStore(ref, image.WithUnpack(platforms.DefaultSpec(), defaults.DefaultSnapshotter))
	if err := client.Transfer(ctx, reg, store, transfer.WithProgress(progress)); err != nil {
		t.Fatalf("Transfer(%s): %v", ref, err)
	}

	img, err := client.GetImage(ctx, ref)
	if err != nil {
		t.Fatalf("GetImage(%s): %v", ref, err)
	}
	unpacked, err := img.IsUnpacked(ctx, defaults.DefaultSnapshotter)
	if err != nil || !unpacked {
		t.Fatalf("IsUnpacked = %v, %v", unpacked, err)
	}
	mu.Lock()
	for _, want := range []string{"saved", "complete", "extracted"} {
		if events[want] == 0 {
			t.Errorf("no %q progress event among %v", want, events)
		}
	}
	mu.Unlock()

	// A progress stream nobody opened is NotFound.
	_, err = transferapi.NewTransferClient(client.Conn().(grpc.ClientConnInterface)).Transfer(ctx, &transferapi.TransferRequest{
		Source:      mustAny(t, &transfertypes.OCIRegistry{Reference: ref}),
		Destination: mustAny(t, &transfertypes.ImageStore{Name: ref}),
		Options:     &transferapi.TransferOptions{ProgressStream: "never-opened"},
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Transfer with an unknown stream: err = %v, want NotFound", err)
	}

	if err := client.ImageService().Delete(ctx, ref, images.SynchronousDelete()); err != nil {
		t.Fatalf("image Delete: %v", err)
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		t.Fatalf("MarshalAny: %v", err)
	}
	return &anypb.Any{TypeUrl: a.GetTypeUrl(), Value: a.GetValue()}
}
