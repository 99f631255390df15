package criproxy

import (
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxMessage is kubelet's limit on CRI messages (16 MiB): image lists of big nodes are long.
const maxMessage = 16 << 20

// DialContainerd connects to containerd's CRI image service on its unix socket.
func DialContainerd(socket string) (runtime.ImageServiceClient, io.Closer, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		return nil, nil, fmt.Errorf("criproxy: containerd at %s: %w", socket, err)
	}
	return runtime.NewImageServiceClient(conn), conn, nil
}

// ServerOptions are the options of the gRPC server Register is given: kubelet's message limits.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage)}
}

// Register adds p to srv as the CRI image service.
func Register(srv *grpc.Server, p *Proxy) { runtime.RegisterImageServiceServer(srv, p) }
