// Command streamclient drives berth's CRI streaming server the way kubectl and the
// kubelet's clients do: client-go's SPDY, WebSocket and fallback executors for
// exec/attach, and its port-forwarder over the SPDY dialer, all with default options.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
)

// oneSize reports a single terminal size, then ends the resize stream.
type oneSize struct {
	size *remotecommand.TerminalSize
}

func (q *oneSize) Next() *remotecommand.TerminalSize {
	s := q.size
	q.size = nil
	return s
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: streamclient exec|portforward [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "exec":
		os.Exit(runExec(os.Args[2:]))
	case "portforward":
		os.Exit(runPortForward(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func runExec(args []string) int {
	fs := flag.NewFlagSet("exec", flag.ExitOnError)
	rawURL := fs.String("url", "", "URL returned by Exec or Attach")
	proto := fs.String("proto", "spdy", "spdy, websocket or fallback")
	tty := fs.Bool("tty", false, "request a terminal")
	stdin := fs.Bool("stdin", false, "send this process's stdin")
	resize := fs.String("resize", "", "terminal size WIDTHxHEIGHT to send once")
	protocols := fs.String("protocols", "", "comma-separated SPDY subprotocols to offer instead of client-go's list")
	_ = fs.Parse(args)

	u, err := url.Parse(*rawURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad url:", err)
		return 2
	}
	config := &rest.Config{Host: u.Scheme + "://" + u.Host}
	var exec remotecommand.Executor
	switch *proto {
	case "spdy":
		if *protocols == "" {
			exec, err = remotecommand.NewSPDYExecutor(config, http.MethodPost, u)
		} else {
			var transport http.RoundTripper
			var upgrader spdy.Upgrader
			transport, upgrader, err = spdy.RoundTripperFor(config)
			if err == nil {
				exec, err = remotecommand.NewSPDYExecutorForProtocols(transport, upgrader,
					http.MethodPost, u, strings.Split(*protocols, ",")...)
			}
		}
	case "websocket":
		exec, err = remotecommand.NewWebSocketExecutor(config, http.MethodGet, u.String())
	case "fallback":
		// The same composition kubectl exec uses.
		var ws, sp remotecommand.Executor
		ws, err = remotecommand.NewWebSocketExecutor(config, http.MethodGet, u.String())
		if err == nil {
			sp, err = remotecommand.NewSPDYExecutor(config, http.MethodPost, u)
		}
		if err == nil {
			exec, err = remotecommand.NewFallbackExecutor(ws, sp, func(err error) bool {
				return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
			})
		}
	default:
		err = fmt.Errorf("unknown protocol %q", *proto)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "executor:", err)
		return 2
	}

	opts := remotecommand.StreamOptions{Stdout: os.Stdout, Tty: *tty}
	if !*tty {
		opts.Stderr = os.Stderr
	}
	if *stdin {
		opts.Stdin = os.Stdin
	}
	if *resize != "" {
		w, h, ok := strings.Cut(*resize, "x")
		width, errW := strconv.Atoi(w)
		height, errH := strconv.Atoi(h)
		if !ok || errW != nil || errH != nil {
			fmt.Fprintln(os.Stderr, "bad -resize")
			return 2
		}
		opts.TerminalSizeQueue = &oneSize{&remotecommand.TerminalSize{Width: uint16(width), Height: uint16(height)}}
	}
	err = exec.StreamWithContext(context.Background(), opts)
	var exitErr utilexec.ExitError
	switch {
	case err == nil:
		fmt.Fprintln(os.Stderr, "streamclient: exit 0")
		return 0
	case errors.As(err, &exitErr):
		fmt.Fprintf(os.Stderr, "streamclient: exit %d\n", exitErr.ExitStatus())
		return exitErr.ExitStatus()
	default:
		fmt.Fprintln(os.Stderr, "streamclient: error:", err)
		return 100
	}
}

func runPortForward(args []string) int {
	fs := flag.NewFlagSet("portforward", flag.ExitOnError)
	rawURL := fs.String("url", "", "URL returned by PortForward")
	port := fs.Int("port", 0, "port in the pod to forward")
	msg := fs.String("msg", "", "text to send through the tunnel; the reply is printed")
	proto := fs.String("proto", "spdy", "spdy, websocket (SPDY tunnelled in WebSocket) or fallback")
	_ = fs.Parse(args)

	u, err := url.Parse(*rawURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad url:", err)
		return 2
	}
	config := &rest.Config{Host: u.Scheme + "://" + u.Host}
	transport, upgrader, err := spdy.RoundTripperFor(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "round tripper:", err)
		return 2
	}
	var dialer httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	if *proto != "spdy" {
		tunnel, err := portforward.NewSPDYOverWebsocketDialer(u, config)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tunneling dialer:", err)
			return 2
		}
		if *proto == "websocket" {
			dialer = tunnel
		} else {
			// The same composition kubectl port-forward uses.
			dialer = portforward.NewFallbackDialer(tunnel, dialer, func(err error) bool {
				return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
			})
		}
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"},
		[]string{fmt.Sprintf("0:%d", *port)}, stop, ready, io.Discard, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "port forwarder:", err)
		return 2
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		fmt.Fprintln(os.Stderr, "streamclient: error:", err)
		return 100
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		fmt.Fprintln(os.Stderr, "streamclient: ports:", ports, err)
		return 100
	}
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
	if err != nil {
		fmt.Fprintln(os.Stderr, "streamclient: dial:", err)
		return 100
	}
	if _, err := conn.Write([]byte(*msg)); err != nil {
		fmt.Fprintln(os.Stderr, "streamclient: write:", err)
		return 100
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(conn)
	_ = conn.Close()
	close(stop)
	if err != nil {
		fmt.Fprintln(os.Stderr, "streamclient: read:", err)
		return 100
	}
	fmt.Print(string(reply))
	<-done
	return 0
}
