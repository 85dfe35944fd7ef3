// kubelet-cri-client: the CRI client of kubelet 1.36 (k8s.io/cri-client, the code the kubelet
// dials its runtime with: grpc-go, `:authority: localhost`, its timeouts, log reduction and
// the streaming list calls of the CRIListStreaming gate) driving one pod's lifecycle, for
// criguard's tests: run once against the runtime and once through criguard, the transcripts
// must be the same.
//
//	kubelet-cri-client -endpoint unix:///run/criguard.sock -name through -image docker.io/library/busybox:1.36
//
// Each step prints one line, "<Method> <what the answer says>", without the ids and times that
// differ between runs. Any error ends the program with status 1 after printing it.
//
// With -trace-endpoint HOST:PORT it traces as a kubelet with tracing on does: an SDK tracer
// provider exporting over OTLP/gRPC, the cri-client's otelgrpc handler with the W3C trace-context
// and baggage propagators, every call a child of one "syncPod" span; the trace id goes to stderr.
//
// Built offline with Debian's golang-1.27-go and the Debian packages of k8s.io/cri-client and
// its dependencies, in GOPATH mode (tests/clients/install.sh).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func main() {
	endpoint := flag.String("endpoint", "", "the CRI socket, unix:///...")
	name := flag.String("name", "kubelet-1-36", "the pod's name (namespace criguard-e2e)")
	image := flag.String("image", "docker.io/library/busybox:1.36", "the container's image")
	streaming := flag.Bool("streaming", true, "list with the Stream* calls (CRIListStreaming)")
	traceEndpoint := flag.String("trace-endpoint", "", "export spans over OTLP/gRPC to HOST:PORT")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var tp trace.TracerProvider
	if *traceEndpoint != "" {
		provider, err := tracerProvider(ctx, *traceEndpoint)
		if err != nil {
			fmt.Printf("error %v\n", err)
			os.Exit(1)
		}
		defer provider.Shutdown(context.Background())
		var span trace.Span
		ctx, span = provider.Tracer("kubelet").Start(ctx, "syncPod")
		defer span.End()
		fmt.Fprintf(os.Stderr, "trace %s\n", span.SpanContext().TraceID())
		tp = provider
	}
	if err := run(ctx, tp, *endpoint, *name, *image, *streaming); err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
}

// tracerProvider is what the kubelet builds from KubeletConfiguration.tracing: every span
// sampled, exported over OTLP/gRPC without TLS.
func tracerProvider(ctx context.Context, endpoint string) (*sdktrace.TracerProvider, error) {
	exporter, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
	if err != nil {
		return nil, err
	}
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "kubelet"))),
	), nil
}

func step(method string, format string, args ...interface{}) {
	fmt.Printf("%s %s\n", method, fmt.Sprintf(format, args...))
}

func run(ctx context.Context, tp trace.TracerProvider, endpoint, name, image string, streaming bool) error {
	rt, err := remote.NewRemoteRuntimeService(ctx, endpoint, 10*time.Second, tp, streaming)
	if err != nil {
		return err
	}
	images, err := remote.NewRemoteImageService(ctx, endpoint, 10*time.Second, tp, streaming)
	if err != nil {
		return err
	}
	version, err := rt.Version(ctx, "v1")
	if err != nil {
		return err
	}
	step("Version", "%s %s", version.RuntimeName, version.RuntimeApiVersion)

	selector := map[string]string{"criguard-e2e": name}
	// Pods an interrupted run left behind.
	old, err := rt.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{LabelSelector: selector})
	if err != nil {
		return err
	}
	for _, pod := range old {
		_ = rt.StopPodSandbox(ctx, pod.Id)
		_ = rt.RemovePodSandbox(ctx, pod.Id)
	}

	status, err := images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: image}, false)
	if err != nil {
		return err
	}
	if status.Image == nil {
		return fmt.Errorf("image %s is not on the node", image)
	}
	tags := append([]string(nil), status.Image.RepoTags...)
	sort.Strings(tags)
	step("ImageStatus", "%s", strings.Join(tags, ","))
	listed, err := images.ListImages(ctx, &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: image}})
	if err != nil {
		return err
	}
	step("ListImages", "%d", len(listed))

	uid := "kubelet-1-36-" + name
	pod := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "criguard-e2e", Uid: uid},
		Hostname: name,
		Labels:   selector,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/criguard-e2e/" + uid,
		},
	}
	sandbox, err := rt.RunPodSandbox(ctx, pod, "")
	if err != nil {
		return err
	}
	step("RunPodSandbox", "ok")
	container := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		// As the kubelet sends it: the image's id, and the name the pod spec gives it.
		Image:   &runtimeapi.ImageSpec{Image: status.Image.Id, UserSpecifiedImage: image},
		Command: []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"},
		Envs:    []*runtimeapi.KeyValue{{Key: "GREETING", Value: []byte("hello from kubelet 1.36")}},
		Labels:  map[string]string{"criguard-e2e": name},
	}
	id, err := rt.CreateContainer(ctx, sandbox, container, pod)
	if err != nil {
		return err
	}
	step("CreateContainer", "ok")
	if err := rt.StartContainer(ctx, id); err != nil {
		return err
	}
	step("StartContainer", "ok")
	stdout, _, err := rt.ExecSync(ctx, id, []string{"sh", "-c", "echo $GREETING"}, 10*time.Second)
	if err != nil {
		return err
	}
	step("ExecSync", "%q", string(stdout))
	containers, err := rt.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: sandbox})
	if err != nil {
		return err
	}
	step("ListContainers", "%d", len(containers))
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{LabelSelector: selector})
	if err != nil {
		return err
	}
	step("ListPodSandbox", "%d", len(pods))
	cstatus, err := rt.ContainerStatus(ctx, id, false)
	if err != nil {
		return err
	}
	step("ContainerStatus", "%s", cstatus.Status.State)
	stats, err := rt.ListContainerStats(ctx, &runtimeapi.ContainerStatsFilter{PodSandboxId: sandbox})
	if err != nil {
		return err
	}
	step("ListContainerStats", "%d", len(stats))
	if err := rt.StopContainer(ctx, id, 10); err != nil {
		return err
	}
	step("StopContainer", "ok")
	if err := rt.RemoveContainer(ctx, id); err != nil {
		return err
	}
	step("RemoveContainer", "ok")
	if err := rt.StopPodSandbox(ctx, sandbox); err != nil {
		return err
	}
	step("StopPodSandbox", "ok")
	if err := rt.RemovePodSandbox(ctx, sandbox); err != nil {
		return err
	}
	step("RemovePodSandbox", "ok")
	return nil
}
