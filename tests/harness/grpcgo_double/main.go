// A CRI runtime double on a real grpc-go server (Debian 12's golang-google-grpc-dev, 1.33:
// built before the fix for CVE-2026-33186, so it routes a :path without its leading slash).
// It registers runtime.v1.RuntimeService and runtime.v1alpha2.RuntimeService with the
// methods the tests use, through grpc-go's own ServiceDesc routing, and a raw-bytes codec
// (no generated code, so it builds offline in GOPATH mode). Every call that reaches a
// handler is appended to LOG as "SERVICE/METHOD" and answered with that text, so a test can
// tell exactly which handler grpc-go routed a request to (LOG lines: "SERVICE/METHOD BODYHEX").
//
// usage: grpcgo_double SOCKET LOG
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

type raw struct{}

func (raw) Name() string { return "proto" }
func (raw) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: %T", v)
	}
	return *b, nil
}
func (raw) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

var (
	mu  sync.Mutex
	log *os.File
)

func handler(name string) func(interface{}, context.Context, func(interface{}) error, grpc.UnaryServerInterceptor) (interface{}, error) {
	return func(_ interface{}, _ context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		mu.Lock()
		fmt.Fprintf(log, "%s %x\n", name, in)
		log.Sync()
		mu.Unlock()
		out := []byte(name)
		return &out, nil
	}
}

func desc(service string, methods ...string) *grpc.ServiceDesc {
	d := &grpc.ServiceDesc{ServiceName: service, HandlerType: (*interface{})(nil)}
	for _, m := range methods {
		d.Methods = append(d.Methods, grpc.MethodDesc{MethodName: m, Handler: handler(service + "/" + m)})
	}
	return d
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: grpcgo_double SOCKET LOG")
		os.Exit(2)
	}
	encoding.RegisterCodec(raw{})
	var err error
	log, err = os.OpenFile(os.Args[2], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lis, err := net.Listen("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	methods := []string{"Version", "CheckpointContainer", "ListContainers", "ContainerStatus"}
	s.RegisterService(desc("runtime.v1.RuntimeService", methods...), nil)
	s.RegisterService(desc("runtime.v1alpha2.RuntimeService", methods...), nil)
	fmt.Println("ready")
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
