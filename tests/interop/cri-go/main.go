// Command cri-go is a CRI client built on Debian's grpc-go (1.33) that dials a unix socket
// exactly as kubelet v1.28 does: the socket *path* as the dial target (grpc-go's passthrough
// resolver, so every request's :authority is that path), an insecure transport, a context
// dialer for "unix" and 16 MiB message limits. netready's interop tests drive it.
//
// Protocol, one JSON object per line: stdin {"method": "/runtime.v1.RuntimeService/Version",
// "req": "<hex of the request message>"}; stdout {"method", "code", "message", "resp",
// "elapsed_ns"}, the last the call's time as this client saw it (for the netperf bench).
// Messages are opaque bytes (a pass-through codec): the tests encode and decode them.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

type call struct {
	Method string `json:"method"`
	Req    string `json:"req"`
}

type reply struct {
	Method  string `json:"method"`
	Code    uint32 `json:"code"`
	Message string `json:"message"`
	Resp    string `json:"resp"`
	Elapsed int64  `json:"elapsed_ns"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cri-go /path/to/cri.sock")
		os.Exit(2)
	}
	const maxMsgSize = 16 * 1024 * 1024
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, os.Args[1],
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var c call
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			fmt.Fprintln(os.Stderr, "bad input line:", err)
			os.Exit(2)
		}
		req, err := hex.DecodeString(c.Req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad hex:", err)
			os.Exit(2)
		}
		// kubelet's deadline for most calls.
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var resp []byte
		start := time.Now()
		err = conn.Invoke(cctx, c.Method, &req, &resp, grpc.ForceCodec(rawCodec{}))
		elapsed := time.Since(start)
		ccancel()
		st := status.Convert(err)
		if err := out.Encode(reply{c.Method, uint32(st.Code()), st.Message(), hex.EncodeToString(resp), elapsed.Nanoseconds()}); err != nil {
			os.Exit(1)
		}
	}
}
