// cri-go-client: grpc-go, the kubelet's client stack, driving a CRI socket for criguard's tests.
//
// It dials the socket as the kubelet does and makes the calls it reads from standard input,
// one JSON object a line, answering each with one JSON line on standard output. Messages are
// raw protobuf bytes (base64): the test, not this program, encodes and decodes them, so no
// generated code is needed and grpc-go's own transport, retry and reconnect do the work.
//
//	-dial legacy     the socket path as target and a context dialer: kubelets 1.24 to 1.30
//	                 (k8s.io/kubernetes/pkg/kubelet/cri/remote), whose :authority is the path
//	-dial localhost  the same with grpc.WithAuthority("localhost"): kubelets 1.31 and later
//	-keepalive 10s   client keepalive pings, as node agents configure them
//
// Requests:
//
//	{"op":"call","method":"/runtime.v1.RuntimeService/Version","request":"<base64>",
//	 "timeout_ms":2000,"metadata":{"k":"v"}}
//	    → {"code":0,"message":"","response":"<base64>","ms":1.2}
//	{"op":"stream","method":"...","request":"<base64>","count":2,"timeout_ms":5000}
//	    → {"code":..,"message":"..","responses":["<base64>",...]}   (first count messages)
//	{"op":"load","method":"...","request":"<base64>","callers":8,"duration_ms":5000}
//	    → {"ok":n,"failed":n,"errors":{"message":count},"max_ms":..}
//	{"op":"sleep","duration_ms":25000}  → {}   (the connection idles, keepalive pings go on)
//
// Built offline with Debian's golang-go and golang-google-grpc-dev in GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o cri-go-client main.go
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec passes message bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type request struct {
	Op         string            `json:"op"`
	Method     string            `json:"method"`
	Request    string            `json:"request"`
	TimeoutMs  int64             `json:"timeout_ms"`
	Metadata   map[string]string `json:"metadata"`
	Count      int               `json:"count"`
	Callers    int               `json:"callers"`
	DurationMs int64             `json:"duration_ms"`
}

type reply struct {
	Code      int            `json:"code"`
	Message   string         `json:"message"`
	Response  string         `json:"response,omitempty"`
	Responses []string       `json:"responses,omitempty"`
	Ms        float64        `json:"ms"`
	Ok        int            `json:"ok,omitempty"`
	Failed    int            `json:"failed,omitempty"`
	Errors    map[string]int `json:"errors,omitempty"`
	MaxMs     float64        `json:"max_ms,omitempty"`
}

const maxMsgSize = 1024 * 1024 * 16 // the kubelet's

func main() {
	socket := flag.String("socket", "", "the CRI socket")
	dial := flag.String("dial", "legacy", "legacy (kubelet <= 1.30) or localhost (kubelet >= 1.31)")
	keepaliveTime := flag.Duration("keepalive", 0, "client keepalive ping interval (0: none)")
	flag.Parse()

	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	options := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
	}
	switch *dial {
	case "legacy":
	case "localhost":
		options = append(options, grpc.WithAuthority("localhost"))
	default:
		fmt.Fprintf(os.Stderr, "unknown -dial %q\n", *dial)
		os.Exit(2)
	}
	if *keepaliveTime > 0 {
		options = append(options, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: *keepaliveTime, Timeout: 5 * time.Second, PermitWithoutStream: true,
		}))
	}
	conn, err := grpc.DialContext(context.Background(), *socket, options...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintf(os.Stderr, "bad request line: %v\n", err)
			os.Exit(2)
		}
		body, err := base64.StdEncoding.DecodeString(req.Request)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bad base64: %v\n", err)
			os.Exit(2)
		}
		var rep reply
		switch req.Op {
		case "call":
			rep = call(conn, &req, body)
		case "stream":
			rep = stream(conn, &req, body)
		case "load":
			rep = load(conn, &req, body)
		case "sleep":
			time.Sleep(time.Duration(req.DurationMs) * time.Millisecond)
		default:
			fmt.Fprintf(os.Stderr, "unknown op %q\n", req.Op)
			os.Exit(2)
		}
		if err := out.Encode(rep); err != nil {
			os.Exit(1)
		}
	}
}

func callContext(req *request) (context.Context, context.CancelFunc) {
	ctx := context.Background()
	if len(req.Metadata) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, metadata.New(req.Metadata))
	}
	if req.TimeoutMs > 0 {
		return context.WithTimeout(ctx, time.Duration(req.TimeoutMs)*time.Millisecond)
	}
	return context.WithCancel(ctx)
}

func call(conn *grpc.ClientConn, req *request, body []byte) reply {
	ctx, cancel := callContext(req)
	defer cancel()
	var response []byte
	start := time.Now()
	err := conn.Invoke(ctx, req.Method, &body, &response, grpc.ForceCodec(rawCodec{}))
	rep := reply{Ms: float64(time.Since(start).Microseconds()) / 1000}
	if err != nil {
		s := status.Convert(err)
		rep.Code, rep.Message = int(s.Code()), s.Message()
		return rep
	}
	rep.Response = base64.StdEncoding.EncodeToString(response)
	return rep
}

func stream(conn *grpc.ClientConn, req *request, body []byte) reply {
	ctx, cancel := callContext(req)
	defer cancel()
	desc := &grpc.StreamDesc{ServerStreams: true}
	s, err := conn.NewStream(ctx, desc, req.Method, grpc.ForceCodec(rawCodec{}))
	var rep reply
	if err == nil {
		err = s.SendMsg(&body)
	}
	if err == nil {
		err = s.CloseSend()
	}
	for err == nil && len(rep.Responses) < req.Count {
		var message []byte
		if err = s.RecvMsg(&message); err == nil {
			rep.Responses = append(rep.Responses, base64.StdEncoding.EncodeToString(message))
		}
	}
	if err != nil {
		st := status.Convert(err)
		rep.Code, rep.Message = int(st.Code()), st.Message()
	}
	return rep
}

// load calls one method from many goroutines until the time is up, as the kubelet's
// relist and probes do; every failure is counted by its message.
func load(conn *grpc.ClientConn, req *request, body []byte) reply {
	deadline := time.Now().Add(time.Duration(req.DurationMs) * time.Millisecond)
	var mu sync.Mutex
	rep := reply{Errors: map[string]int{}}
	var wg sync.WaitGroup
	for i := 0; i < req.Callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				r := call(conn, req, body)
				mu.Lock()
				if r.Code == 0 {
					rep.Ok++
				} else {
					rep.Failed++
					rep.Errors[fmt.Sprintf("%d: %s", r.Code, r.Message)]++
				}
				if r.Ms > rep.MaxMs {
					rep.MaxMs = r.Ms
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return rep
}
