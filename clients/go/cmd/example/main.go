// Command example imports a busybox image from an OCI image layout into berthd through the API,
// unpacks it, runs `sh -c 'echo hello from go; exit 3'` in a container and checks the output, the
// exit status and the /tasks/exit event, then removes what it created.
//
// Inputs: BERTH_SOCKET (berthd's socket), BERTH_NAMESPACE, BERTH_IMAGE_LAYOUT (an OCI image-layout
// directory). Exits non-zero with a message on any failure.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	berth "berth.dev/clients/go"
	events "berth.dev/clients/go/api/containerd/events"
	containers "berth.dev/clients/go/api/containerd/services/containers/v1"
	content "berth.dev/clients/go/api/containerd/services/content/v1"
	diff "berth.dev/clients/go/api/containerd/services/diff/v1"
	eventsapi "berth.dev/clients/go/api/containerd/services/events/v1"
	images "berth.dev/clients/go/api/containerd/services/images/v1"
	leases "berth.dev/clients/go/api/containerd/services/leases/v1"
	snapshots "berth.dev/clients/go/api/containerd/services/snapshots/v1"
	tasks "berth.dev/clients/go/api/containerd/services/tasks/v1"
	types "berth.dev/clients/go/api/containerd/types"
)

const (
	snapshotter = "overlayfs"
	runtime     = "io.containerd.runc.v2"
	// containerd's type URL for a JSON OCI runtime spec (not a protobuf message).
	specTypeURL   = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
	createTypeURL = "containerd.events.TaskCreate"
	exitTypeURL   = "containerd.events.TaskExit"
	chunkSize     = 1 << 20
	wantExit      = 3
	wantOutput    = "hello from go\n"
	manifestType  = "application/vnd.oci.image.manifest.v1+json"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "example failed:", err)
		os.Exit(1)
	}
}

func env(name string) (string, error) {
	v := os.Getenv(name)
	if v == "" {
		return "", fmt.Errorf("%s is not set", name)
	}
	return v, nil
}

// The parts of the OCI image format the example reads.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	Config descriptor   `json:"config"`
	Layers []descriptor `json:"layers"`
}

type imageConfig struct {
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

type clients struct {
	content    content.ContentClient
	images     images.ImagesClient
	leases     leases.LeasesClient
	snapshots  snapshots.SnapshotsClient
	diff       diff.DiffClient
	containers containers.ContainersClient
	tasks      tasks.TasksClient
	events     eventsapi.EventsClient
}

func run() error {
	socket, err := env("BERTH_SOCKET")
	if err != nil {
		return err
	}
	ns, err := env("BERTH_NAMESPACE")
	if err != nil {
		return err
	}
	layout, err := env("BERTH_IMAGE_LAYOUT")
	if err != nil {
		return err
	}

	conn, err := berth.Dial(socket)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", socket, err)
	}
	defer conn.Close()
	c := clients{
		content:    content.NewContentClient(conn),
		images:     images.NewImagesClient(conn),
		leases:     leases.NewLeasesClient(conn),
		snapshots:  snapshots.NewSnapshotsClient(conn),
		diff:       diff.NewDiffClient(conn),
		containers: containers.NewContainersClient(conn),
		tasks:      tasks.NewTasksClient(conn),
		events:     eventsapi.NewEventsClient(conn),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = berth.WithNamespace(ctx, ns)

	// The lease holds every blob and snapshot the import creates until the image record and the
	// container reference them; it expires on its own if this program dies half-way.
	leaseID := fmt.Sprintf("example-go-%d", time.Now().UnixNano())
	_, err = c.leases.Create(ctx, &leases.CreateRequest{
		Id:     leaseID,
		Labels: map[string]string{"containerd.io/gc.expire": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
	})
	if err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	fmt.Printf("lease %s created\n", leaseID)
	defer func() {
		if _, err := c.leases.Delete(berth.WithNamespace(context.Background(), ns), &leases.DeleteRequest{Id: leaseID}); err != nil {
			fmt.Fprintln(os.Stderr, "delete lease:", err)
		} else {
			fmt.Printf("lease %s deleted\n", leaseID)
		}
	}()
	leased := berth.WithLease(ctx, leaseID)

	name, chain, err := importImage(leased, c, layout)
	if err != nil {
		return err
	}
	return runContainer(ctx, leased, c, ns, name, chain)
}

func readBlob(layout, digest string) ([]byte, error) {
	algo, hexDigest, ok := strings.Cut(digest, ":")
	if !ok || algo != "sha256" || len(hexDigest) != 64 || strings.ContainsAny(hexDigest, "/.") {
		return nil, fmt.Errorf("unsupported digest %q", digest)
	}
	return os.ReadFile(filepath.Join(layout, "blobs", algo, hexDigest))
}

func readJSON(layout, digest string, v any) ([]byte, error) {
	b, err := readBlob(layout, digest)
	if err != nil {
		return nil, err
	}
	return b, json.Unmarshal(b, v)
}

// chainIDs are the names of the committed layer snapshots: the image spec's ChainID of each
// prefix of the layer stack.
func chainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}

// importImage writes the image's blobs, creates its record and unpacks its layers; it returns
// the image name and the chain IDs of its layers.
func importImage(ctx context.Context, c clients, layout string) (string, []string, error) {
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	b, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		return "", nil, fmt.Errorf("read image layout: %w", err)
	}
	if err := json.Unmarshal(b, &index); err != nil {
		return "", nil, fmt.Errorf("index.json: %w", err)
	}
	var target *descriptor
	for i := range index.Manifests {
		if index.Manifests[i].MediaType == manifestType {
			target = &index.Manifests[i]
			break
		}
	}
	if target == nil {
		return "", nil, errors.New("index.json lists no image manifest")
	}
	name := target.Annotations["io.containerd.image.name"]
	if name == "" {
		name = "example.invalid/busybox:latest"
	}
	var m manifest
	if _, err := readJSON(layout, target.Digest, &m); err != nil {
		return "", nil, fmt.Errorf("manifest: %w", err)
	}
	var cfg imageConfig
	if _, err := readJSON(layout, m.Config.Digest, &cfg); err != nil {
		return "", nil, fmt.Errorf("image config: %w", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) || len(m.Layers) == 0 {
		return "", nil, fmt.Errorf("image has %d layers and %d diff IDs", len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	chain := chainIDs(cfg.RootFS.DiffIDs)

	// Labels tell garbage collection what each blob keeps alive, as containerd's client sets them.
	manifestLabels := map[string]string{"containerd.io/gc.ref.content.config": m.Config.Digest}
	for i, l := range m.Layers {
		manifestLabels[fmt.Sprintf("containerd.io/gc.ref.content.l.%d", i)] = l.Digest
	}
	blobs := []struct {
		desc   descriptor
		labels map[string]string
	}{
		{*target, manifestLabels},
		{m.Config, map[string]string{"containerd.io/gc.ref.snapshot." + snapshotter: chain[len(chain)-1]}},
	}
	for i, l := range m.Layers {
		blobs = append(blobs, struct {
			desc   descriptor
			labels map[string]string
		}{l, map[string]string{"containerd.io/uncompressed": cfg.RootFS.DiffIDs[i]}})
	}
	for _, blob := range blobs {
		data, err := readBlob(layout, blob.desc.Digest)
		if err != nil {
			return "", nil, err
		}
		written, err := writeBlob(ctx, c.content, blob.desc.Digest, data, blob.labels)
		if err != nil {
			return "", nil, fmt.Errorf("write %s: %w", blob.desc.Digest, err)
		}
		if written {
			fmt.Printf("content %s written (%d bytes)\n", blob.desc.Digest, len(data))
		} else {
			fmt.Printf("content %s already present\n", blob.desc.Digest)
		}
	}

	img := &images.Image{Name: name, Target: &types.Descriptor{MediaType: target.MediaType, Digest: target.Digest, Size: target.Size}}
	if _, err := c.images.Create(ctx, &images.CreateImageRequest{Image: img}); status.Code(err) == codes.AlreadyExists {
		_, err = c.images.Update(ctx, &images.UpdateImageRequest{Image: img})
		if err != nil {
			return "", nil, fmt.Errorf("update image %s: %w", name, err)
		}
	} else if err != nil {
		return "", nil, fmt.Errorf("create image %s: %w", name, err)
	}
	fmt.Printf("image %s created\n", name)

	for i, layer := range m.Layers {
		if err := unpackLayer(ctx, c, layer, chain, i, cfg.RootFS.DiffIDs[i]); err != nil {
			return "", nil, fmt.Errorf("unpack layer %s: %w", layer.Digest, err)
		}
	}
	return name, chain, nil
}

// writeBlob sends one blob over Content.Write in lock step: STAT, WRITE chunks, COMMIT with the
// expected digest and size, which the server verifies. A blob already present is left as it is
// (and reported as not written).
func writeBlob(ctx context.Context, cc content.ContentClient, digest string, data []byte, labels map[string]string) (bool, error) {
	stream, err := cc.Write(ctx)
	if err != nil {
		return false, err
	}
	total := int64(len(data))
	step := func(req *content.WriteContentRequest) error {
		if err := stream.Send(req); err != nil {
			// The server ended the stream; Recv tells why.
			_, rerr := stream.Recv()
			if rerr != nil {
				return rerr
			}
			return err
		}
		_, err := stream.Recv()
		return err
	}
	ref := "example-go-" + digest
	err = step(&content.WriteContentRequest{Action: content.WriteAction_STAT, Ref: ref, Total: total, Expected: digest})
	if status.Code(err) == codes.AlreadyExists {
		return false, nil
	} else if err != nil {
		return false, err
	}
	for off := int64(0); off < total; off += chunkSize {
		end := min(off+chunkSize, total)
		if err := step(&content.WriteContentRequest{Action: content.WriteAction_WRITE, Ref: ref, Offset: off, Data: data[off:end]}); err != nil {
			return false, err
		}
	}
	// The commit carries the offset reached: containerd reads offset 0 on a commit as "start the
	// ingest over" and would then find it empty.
	if err := step(&content.WriteContentRequest{Action: content.WriteAction_COMMIT, Ref: ref, Offset: total, Total: total, Expected: digest, Labels: labels}); err != nil {
		return false, err
	}
	return true, stream.CloseSend()
}

// unpackLayer applies layer i on top of the snapshot of the layers below it and commits the
// result under its chain ID, unless a snapshot of that name exists already.
func unpackLayer(ctx context.Context, c clients, layer descriptor, chain []string, i int, diffID string) error {
	if _, err := c.snapshots.Stat(ctx, &snapshots.StatSnapshotRequest{Snapshotter: snapshotter, Key: chain[i]}); err == nil {
		fmt.Printf("snapshot %s already unpacked\n", chain[i])
		return nil
	} else if status.Code(err) != codes.NotFound {
		return err
	}
	parent := ""
	if i > 0 {
		parent = chain[i-1]
	}
	key := fmt.Sprintf("extract-%d-%s", time.Now().UnixNano(), chain[i])
	prepared, err := c.snapshots.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Snapshotter: snapshotter, Key: key, Parent: parent})
	if err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	applied, err := c.diff.Apply(ctx, &diff.ApplyRequest{
		Diff:   &types.Descriptor{MediaType: layer.MediaType, Digest: layer.Digest, Size: layer.Size},
		Mounts: prepared.GetMounts(),
	})
	if err == nil && applied.GetApplied().GetDigest() != diffID {
		err = fmt.Errorf("applied layer has diff ID %s, the image config says %s", applied.GetApplied().GetDigest(), diffID)
	}
	if err == nil {
		_, err = c.snapshots.Commit(ctx, &snapshots.CommitSnapshotRequest{Snapshotter: snapshotter, Name: chain[i], Key: key})
	}
	if err != nil {
		// Leave no half-extracted snapshot behind.
		_, _ = c.snapshots.Remove(ctx, &snapshots.RemoveSnapshotRequest{Snapshotter: snapshotter, Key: key})
		return err
	}
	fmt.Printf("layer %s unpacked into snapshot %s\n", layer.Digest, chain[i])
	return nil
}

// spec is a minimal OCI runtime spec of the shape containerd's client generates.
func spec(ns, id string) ([]byte, error) {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
		"CAP_KILL", "CAP_AUDIT_WRITE"}
	mount := func(dest, typ, src string, opts ...string) map[string]any {
		return map[string]any{"destination": dest, "type": typ, "source": src, "options": opts}
	}
	nsList := []map[string]string{}
	for _, t := range []string{"pid", "ipc", "uts", "mount", "network"} {
		nsList = append(nsList, map[string]string{"type": t})
	}
	return json.Marshal(map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"user":            map[string]int{"uid": 0, "gid": 0},
			"args":            []string{"sh", "-c", "echo hello from go; exit 3"},
			"env":             []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"cwd":             "/",
			"capabilities":    map[string][]string{"bounding": caps, "effective": caps, "permitted": caps},
			"rlimits":         []map[string]any{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}},
			"noNewPrivileges": true,
		},
		"root":     map[string]any{"path": "rootfs"},
		"hostname": id,
		"mounts": []map[string]any{
			mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
			mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
			mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
			mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
			mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
			mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
		},
		"linux": map[string]any{
			"cgroupsPath":   "/" + ns + "/" + id,
			"namespaces":    nsList,
			"maskedPaths":   []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"},
			"readonlyPaths": []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	})
}

// taskEvents reads the subscription: it closes live on the /tasks/create of container id (proof
// that the subscription is registered) and returns that container's /tasks/exit.
func taskEvents(sub grpc.ServerStreamingClient[types.Envelope], id string, live chan<- struct{}) (*events.TaskExit, error) {
	for {
		env, err := sub.Recv()
		if err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		switch {
		case env.GetTopic() == "/tasks/create" && env.GetEvent().GetTypeUrl() == createTypeURL:
			var created events.TaskCreate
			if err := proto.Unmarshal(env.GetEvent().GetValue(), &created); err != nil {
				return nil, fmt.Errorf("decode %s: %w", createTypeURL, err)
			}
			if created.GetContainerId() == id && live != nil {
				close(live)
				live = nil
			}
		case env.GetTopic() == "/tasks/exit" && env.GetEvent().GetTypeUrl() == exitTypeURL:
			var exit events.TaskExit
			if err := proto.Unmarshal(env.GetEvent().GetValue(), &exit); err != nil {
				return nil, fmt.Errorf("decode %s: %w", exitTypeURL, err)
			}
			if exit.GetContainerId() == id {
				return &exit, nil
			}
		}
	}
}

// runContainer runs the example's container on the unpacked image and removes it again.
func runContainer(ctx, leased context.Context, c clients, ns, image string, chain []string) (err error) {
	id := fmt.Sprintf("example-go-%d", time.Now().UnixNano())
	_, err = c.snapshots.Prepare(leased, &snapshots.PrepareSnapshotRequest{Snapshotter: snapshotter, Key: id, Parent: chain[len(chain)-1]})
	if err != nil {
		return fmt.Errorf("prepare rootfs: %w", err)
	}
	fmt.Printf("snapshot %s prepared\n", id)
	defer func() {
		if _, rerr := c.snapshots.Remove(ctx, &snapshots.RemoveSnapshotRequest{Snapshotter: snapshotter, Key: id}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove snapshot: %w", rerr))
		} else {
			fmt.Printf("snapshot %s removed\n", id)
		}
	}()

	specJSON, err := spec(ns, id)
	if err != nil {
		return err
	}
	_, err = c.containers.Create(ctx, &containers.CreateContainerRequest{Container: &containers.Container{
		Id:          id,
		Image:       image,
		Runtime:     &containers.Container_Runtime{Name: runtime},
		Spec:        &anypb.Any{TypeUrl: specTypeURL, Value: specJSON},
		Snapshotter: snapshotter,
		SnapshotKey: id,
	}})
	if err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	fmt.Printf("container %s created\n", id)
	defer func() {
		if _, rerr := c.containers.Delete(ctx, &containers.DeleteContainerRequest{Id: id}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("delete container: %w", rerr))
		} else {
			fmt.Printf("container %s deleted\n", id)
		}
	}()

	// The client creates the FIFOs and reads them; the shim opens the other ends.
	dir, err := os.MkdirTemp("", "berth-example-go-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	stdout := filepath.Join(dir, "stdout")
	if err := syscall.Mkfifo(stdout, 0o600); err != nil {
		return fmt.Errorf("mkfifo: %w", err)
	}
	output := make(chan []byte, 1)
	go func() {
		// A blocking open: it returns once the shim opens the write end.
		f, err := os.Open(stdout)
		if err != nil {
			output <- nil
			return
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		output <- b
	}()

	// Subscribe before creating the task. The response headers prove nothing portable (containerd
	// sends them only with the first event), so the task's own /tasks/create event is what shows
	// the subscription is live before the task starts.
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	filter := fmt.Sprintf(`topic~="/tasks/",namespace==%q`, ns)
	sub, err := c.events.Subscribe(subCtx, &eventsapi.SubscribeRequest{Filters: []string{filter}})
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	live := make(chan struct{})
	exited := make(chan error, 1)
	var exit *events.TaskExit
	go func() {
		e, err := taskEvents(sub, id, live)
		exit = e
		exited <- err
	}()

	mounts, err := c.snapshots.Mounts(ctx, &snapshots.MountsRequest{Snapshotter: snapshotter, Key: id})
	if err != nil {
		return fmt.Errorf("rootfs mounts: %w", err)
	}
	// containerd 1.6's runc shim opens a stderr even when its path is empty (and fails); sharing
	// stdout's FIFO works with both daemons and keeps one stream to read.
	created, err := c.tasks.Create(ctx, &tasks.CreateTaskRequest{ContainerId: id, Rootfs: mounts.GetMounts(), Stdout: stdout, Stderr: stdout})
	if err != nil {
		return fmt.Errorf("create task: %w", err)
	}
	fmt.Printf("task %s created (pid %d)\n", id, created.GetPid())
	defer func() {
		if _, rerr := c.tasks.Delete(ctx, &tasks.DeleteTaskRequest{ContainerId: id}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("delete task: %w", rerr))
		} else {
			fmt.Printf("task %s deleted\n", id)
		}
	}()
	select {
	case <-live:
	case err := <-exited:
		return fmt.Errorf("before /tasks/create: %w", err)
	case <-time.After(30 * time.Second):
		return errors.New("no /tasks/create event")
	}
	if _, err := c.tasks.Start(ctx, &tasks.StartRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("start task: %w", err)
	}
	fmt.Printf("task %s started\n", id)
	waited, err := c.tasks.Wait(ctx, &tasks.WaitRequest{ContainerId: id})
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	fmt.Printf("task %s exited with status %d\n", id, waited.GetExitStatus())

	var out []byte
	select {
	case out = <-output:
	case <-time.After(30 * time.Second):
		return errors.New("no end of output on the stdout FIFO")
	}
	fmt.Printf("output: %q\n", out)
	select {
	case err := <-exited:
		if err != nil {
			return err
		}
	case <-time.After(30 * time.Second):
		return errors.New("no /tasks/exit event")
	}
	fmt.Printf("event /tasks/exit: container %s, status %d\n", exit.GetContainerId(), exit.GetExitStatus())

	switch {
	case waited.GetExitStatus() != wantExit:
		return fmt.Errorf("exit status %d, want %d", waited.GetExitStatus(), wantExit)
	case string(out) != wantOutput:
		return fmt.Errorf("output %q, want %q", out, wantOutput)
	case exit.GetExitStatus() != wantExit:
		return fmt.Errorf("/tasks/exit event has status %d, want %d", exit.GetExitStatus(), wantExit)
	}
	fmt.Println("example ok: hello from go, exit status 3")
	return nil
}
