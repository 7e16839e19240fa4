// cri-podstart times a pod start as the issue defines it (RunPodSandbox, CreateContainer and
// StartContainer of busybox) over one gRPC connection, as the kubelet issues them, with
// grpc-go's defaults. It runs RUNS starts back to back, the pods left running as `crictl run`
// leaves them in bench/cri.sh, prints each start's milliseconds on stdout, then removes its
// pods. A benchmark tool (bench/cri.sh runs it), never run by CI.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "the CRI socket (unix:///path)")
	image := flag.String("image", "registry.k8s.io/e2e-test-images/busybox:1.29-2", "the container image, already pulled")
	runs := flag.Int("runs", 40, "pod starts")
	prefix := flag.String("prefix", fmt.Sprintf("bench-podstart-%d", os.Getpid()), "pod name prefix")
	logs := flag.String("logs", os.TempDir(), "directory for the pods' log directories")
	flag.Parse()
	if err := run(*endpoint, *image, *runs, *prefix, *logs); err != nil {
		fmt.Fprintln(os.Stderr, "cri-podstart:", err)
		os.Exit(1)
	}
}

func run(endpoint, image string, runs int, prefix, logs string) error {
	if !strings.HasPrefix(endpoint, "unix://") {
		return fmt.Errorf("endpoint %q: want unix:///path", endpoint)
	}
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtime.NewRuntimeServiceClient(conn)
	ctx := context.Background()
	if _, err := rt.Version(ctx, &runtime.VersionRequest{}); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	var pods []string
	defer func() {
		for _, id := range pods {
			_, _ = rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id})
			_, _ = rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id})
		}
	}()
	// One start first, not timed: the first pod on a network makes its bridge.
	for i := 0; i <= runs; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		logDir := filepath.Join(logs, name)
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			return err
		}
		pod := &runtime.PodSandboxConfig{
			Metadata:     &runtime.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name},
			LogDirectory: logDir,
			Linux:        &runtime.LinuxPodSandboxConfig{},
		}
		ctr := &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: "c"},
			Image:    &runtime.ImageSpec{Image: image},
			Command:  []string{"sleep", "3600"},
			LogPath:  "c.log",
			Linux:    &runtime.LinuxContainerConfig{},
		}
		start := time.Now()
		p, err := rt.RunPodSandbox(ctx, &runtime.RunPodSandboxRequest{Config: pod})
		if err != nil {
			return fmt.Errorf("RunPodSandbox %s: %w", name, err)
		}
		pods = append(pods, p.PodSandboxId)
		c, err := rt.CreateContainer(ctx, &runtime.CreateContainerRequest{
			PodSandboxId: p.PodSandboxId, Config: ctr, SandboxConfig: pod,
		})
		if err != nil {
			return fmt.Errorf("CreateContainer in %s: %w", name, err)
		}
		if _, err := rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			return fmt.Errorf("StartContainer in %s: %w", name, err)
		}
		took := time.Since(start)
		if i > 0 {
			fmt.Printf("%.1f\n", float64(took.Microseconds())/1000)
		}
	}
	return nil
}
