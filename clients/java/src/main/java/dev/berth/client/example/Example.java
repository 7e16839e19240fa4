package dev.berth.client.example;

import com.google.gson.Gson;
import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.Empty;
import com.google.protobuf.FieldMask;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Parser;
import containerd.events.Task.TaskCreate;
import containerd.events.Task.TaskExit;
import containerd.services.containers.v1.ContainersGrpc;
import containerd.services.containers.v1.ContainersOuterClass.Container;
import containerd.services.containers.v1.ContainersOuterClass.CreateContainerRequest;
import containerd.services.containers.v1.ContainersOuterClass.DeleteContainerRequest;
import containerd.services.content.v1.ContentGrpc;
import containerd.services.content.v1.ContentOuterClass.WriteAction;
import containerd.services.content.v1.ContentOuterClass.WriteContentRequest;
import containerd.services.content.v1.ContentOuterClass.WriteContentResponse;
import containerd.services.diff.v1.DiffGrpc;
import containerd.services.diff.v1.DiffOuterClass.ApplyRequest;
import containerd.services.events.v1.EventsGrpc;
import containerd.services.events.v1.EventsOuterClass.SubscribeRequest;
import containerd.services.images.v1.ImagesGrpc;
import containerd.services.images.v1.ImagesOuterClass.CreateImageRequest;
import containerd.services.images.v1.ImagesOuterClass.UpdateImageRequest;
import containerd.services.leases.v1.LeasesGrpc;
import containerd.services.leases.v1.LeasesOuterClass;
import containerd.services.snapshots.v1.SnapshotsGrpc;
import containerd.services.snapshots.v1.SnapshotsOuterClass.CommitSnapshotRequest;
import containerd.services.snapshots.v1.SnapshotsOuterClass.MountsRequest;
import containerd.services.snapshots.v1.SnapshotsOuterClass.PrepareSnapshotRequest;
import containerd.services.snapshots.v1.SnapshotsOuterClass.RemoveSnapshotRequest;
import containerd.services.snapshots.v1.SnapshotsOuterClass.StatSnapshotRequest;
import containerd.services.tasks.v1.TasksGrpc;
import containerd.services.tasks.v1.TasksOuterClass.CreateTaskRequest;
import containerd.services.tasks.v1.TasksOuterClass.DeleteTaskRequest;
import containerd.services.tasks.v1.TasksOuterClass.StartRequest;
import containerd.services.tasks.v1.TasksOuterClass.WaitRequest;
import containerd.services.tasks.v1.TasksOuterClass.WaitResponse;
import containerd.services.version.v1.VersionGrpc;
import containerd.types.DescriptorOuterClass.Descriptor;
import containerd.types.Event.Envelope;
import containerd.types.MountOuterClass.Mount;
import dev.berth.client.Berth;
import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptors;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Function;

/**
 * The example: imports a busybox OCI image layout through berthd's API, runs a container from it,
 * reads its output through a FIFO, sees its exit both from Tasks.Wait and as a /tasks/exit event,
 * and removes everything it created except the image.
 *
 * <p>Inputs (environment): BERTH_SOCKET, BERTH_NAMESPACE, BERTH_IMAGE_LAYOUT (an OCI image-layout
 * directory). Exits 0 on success, 1 with a message on any failure.
 */
public final class Example {
  private static final String LANG = "java";
  private static final String SNAPSHOTTER = "overlayfs";
  private static final String RUNTIME = "io.containerd.runc.v2";
  private static final String SPEC_TYPE_URL =
      "types.containerd.io/opencontainers/runtime-spec/1/Spec";
  private static final String CREATE_TOPIC = "/tasks/create";
  private static final String EXIT_TOPIC = "/tasks/exit";
  private static final int WANT_STATUS = 3;
  private static final String WANT_OUTPUT = "hello from " + LANG;

  /** containerd's client writes content in chunks of 1 MiB. */
  private static final int CHUNK = 1 << 20;

  /** Bound on every wait, so that a broken daemon fails the example instead of hanging it. */
  private static final long PATIENCE_SECONDS = 60;

  /** A failure with a message meant for the user. */
  static final class Failure extends Exception {
    Failure(String message) {
      super(message);
    }

    Failure(String message, Throwable cause) {
      super(message, cause);
    }
  }

  @FunctionalInterface
  interface Call<T> {
    T run() throws StatusRuntimeException;
  }

  @FunctionalInterface
  interface Step {
    void run() throws Exception;
  }

  /** Runs one RPC; a failure names it and carries its gRPC status. */
  static <T> T rpc(String what, Call<T> call) throws Failure {
    try {
      return call.run();
    } catch (StatusRuntimeException e) {
      throw new Failure(what + ": " + e.getStatus(), e);
    }
  }

  static boolean hasCode(Failure f, Status.Code code) {
    return f.getCause() instanceof StatusRuntimeException e && e.getStatus().getCode() == code;
  }

  static String env(String name) throws Failure {
    String v = System.getenv(name);
    if (v == null || v.isEmpty()) {
      throw new Failure(name + " is not set");
    }
    return v;
  }

  static <T> T await(String what, CompletableFuture<T> f) throws Failure {
    try {
      return f.get(PATIENCE_SECONDS, TimeUnit.SECONDS);
    } catch (TimeoutException e) {
      throw new Failure(what + ": nothing within " + PATIENCE_SECONDS + "s");
    } catch (ExecutionException e) {
      Throwable cause = e.getCause();
      if (cause instanceof Failure failure) {
        throw failure;
      }
      throw new Failure(what + ": " + cause, cause);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new Failure(what + ": interrupted", e);
    }
  }

  private final Berth berth;
  private final String ns;

  private Example(Berth berth, String ns) {
    this.berth = berth;
    this.ns = ns;
  }

  private static Descriptor descriptor(Oci.Descriptor d) {
    return Descriptor.newBuilder()
        .setMediaType(d.mediaType())
        .setDigest(d.digest())
        .setSize(d.size())
        .build();
  }

  /**
   * Content.Write of one blob: its bytes in chunks, then a commit carrying the expected digest and
   * the labels that tell the garbage collector what the blob references. A blob already present
   * answers AlreadyExists, which is success.
   */
  private void writeBlob(String lease, Path file, Oci.Descriptor desc, Map<String, String> labels)
      throws Failure, IOException {
    byte[] data = Files.readAllBytes(file);
    if (data.length != desc.size()) {
      throw new Failure(file + ": " + data.length + " bytes, the descriptor says " + desc.size());
    }
    CompletableFuture<WriteContentResponse> done = new CompletableFuture<>();
    StreamObserver<WriteContentResponse> responses =
        new StreamObserver<>() {
          private WriteContentResponse last;

          @Override
          public void onNext(WriteContentResponse r) {
            last = r;
          }

          @Override
          public void onError(Throwable t) {
            done.completeExceptionally(t);
          }

          @Override
          public void onCompleted() {
            done.complete(last);
          }
        };
    var content = ContentGrpc.newStub(berth.channel()).withInterceptors(Berth.namespace(ns, lease));
    StreamObserver<WriteContentRequest> requests = content.write(responses);
    var base =
        WriteContentRequest.newBuilder()
            .setRef(LANG + "-example-" + desc.digest())
            .setTotal(desc.size())
            .setExpected(desc.digest());
    for (int off = 0; off < data.length; off += CHUNK) {
      requests.onNext(
          base.clone()
              .setAction(WriteAction.WRITE)
              .setOffset(off)
              .setData(ByteString.copyFrom(data, off, Math.min(CHUNK, data.length - off)))
              .build());
    }
    requests.onNext(
        base.clone()
            .setAction(WriteAction.COMMIT)
            .setOffset(data.length)
            .putAllLabels(labels)
            .build());
    requests.onCompleted();
    WriteContentResponse last;
    try {
      last = await("Content.Write " + desc.digest(), done);
    } catch (Failure f) {
      if (f.getCause() instanceof StatusRuntimeException e
          && e.getStatus().getCode() == Status.Code.ALREADY_EXISTS) {
        return;
      }
      throw f;
    }
    if (last == null
        || last.getAction() != WriteAction.COMMIT
        || !last.getDigest().equals(desc.digest())) {
      throw new Failure("Content.Write " + desc.digest() + ": the commit answered " + last);
    }
  }

  /** The image's name and the chain ID of its top layer. */
  record Imported(String name, String top) {}

  /** Imports the layout's image under {@code lease}. */
  private Imported importImage(String lease, Path layout) throws Failure, IOException {
    Oci.Image img = Oci.readLayout(layout);
    List<String> chain = Oci.chainIds(img.diffIds());
    if (chain.isEmpty()) {
      throw new Failure("the image has no layers");
    }
    String top = chain.get(chain.size() - 1);

    // Children first, so each label below names a blob that is already there.
    for (int i = 0; i < img.layers().size(); i++) {
      Oci.Descriptor layer = img.layers().get(i);
      writeBlob(
          lease,
          Oci.blobPath(layout, layer.digest()),
          layer,
          Map.of("containerd.io/uncompressed", img.diffIds().get(i)));
    }
    writeBlob(
        lease,
        Oci.blobPath(layout, img.config().digest()),
        img.config(),
        Map.of("containerd.io/gc.ref.snapshot." + SNAPSHOTTER, top));
    Map<String, String> manifestLabels = new LinkedHashMap<>();
    manifestLabels.put("containerd.io/gc.ref.content.config", img.config().digest());
    for (int i = 0; i < img.layers().size(); i++) {
      manifestLabels.put("containerd.io/gc.ref.content.l." + i, img.layers().get(i).digest());
    }
    writeBlob(lease, Oci.blobPath(layout, img.manifest().digest()), img.manifest(), manifestLabels);
    System.out.printf(
        "wrote %d blobs (manifest %s)%n", img.layers().size() + 2, img.manifest().digest());

    var images =
        ImagesGrpc.newBlockingStub(berth.channel()).withInterceptors(Berth.namespace(ns, lease));
    var image =
        containerd.services.images.v1.ImagesOuterClass.Image.newBuilder()
            .setName(img.name())
            .setTarget(descriptor(img.manifest()))
            .build();
    try {
      rpc(
          "Images.Create",
          () -> images.create(CreateImageRequest.newBuilder().setImage(image).build()));
      System.out.println("created image " + img.name());
    } catch (Failure f) {
      if (!hasCode(f, Status.Code.ALREADY_EXISTS)) {
        throw f;
      }
      rpc(
          "Images.Update",
          () ->
              images.update(
                  UpdateImageRequest.newBuilder()
                      .setImage(image)
                      .setUpdateMask(FieldMask.newBuilder().addPaths("target"))
                      .build()));
      System.out.println("updated image " + img.name());
    }

    // Unpack: each layer applied onto a snapshot of its parents, committed under its chain ID.
    var snapshots =
        SnapshotsGrpc.newBlockingStub(berth.channel()).withInterceptors(Berth.namespace(ns, lease));
    var diff =
        DiffGrpc.newBlockingStub(berth.channel()).withInterceptors(Berth.namespace(ns, lease));
    for (int i = 0; i < img.layers().size(); i++) {
      String chainId = chain.get(i);
      try {
        rpc(
            "Snapshots.Stat",
            () ->
                snapshots.stat(
                    StatSnapshotRequest.newBuilder()
                        .setSnapshotter(SNAPSHOTTER)
                        .setKey(chainId)
                        .build()));
        System.out.printf("layer %d already unpacked (%s)%n", i, chainId);
        continue;
      } catch (Failure f) {
        if (!hasCode(f, Status.Code.NOT_FOUND)) {
          throw f;
        }
      }
      String key =
          "extract-" + ProcessHandle.current().pid() + "-" + System.nanoTime() + " " + chainId;
      String parent = i > 0 ? chain.get(i - 1) : "";
      List<Mount> mounts =
          rpc(
                  "Snapshots.Prepare",
                  () ->
                      snapshots.prepare(
                          PrepareSnapshotRequest.newBuilder()
                              .setSnapshotter(SNAPSHOTTER)
                              .setKey(key)
                              .setParent(parent)
                              .build()))
              .getMountsList();
      Oci.Descriptor layer = img.layers().get(i);
      Descriptor applied =
          rpc(
                  "Diff.Apply",
                  () ->
                      diff.apply(
                          ApplyRequest.newBuilder()
                              .setDiff(descriptor(layer))
                              .addAllMounts(mounts)
                              .build()))
              .getApplied();
      if (!applied.getDigest().equals(img.diffIds().get(i))) {
        throw new Failure(
            "Diff.Apply of layer "
                + i
                + " gave "
                + applied.getDigest()
                + ", the config says "
                + img.diffIds().get(i));
      }
      rpc(
          "Snapshots.Commit",
          () ->
              snapshots.commit(
                  CommitSnapshotRequest.newBuilder()
                      .setSnapshotter(SNAPSHOTTER)
                      .setName(chainId)
                      .setKey(key)
                      .build()));
      System.out.printf("unpacked layer %d into snapshot %s%n", i, chainId);
    }
    return new Imported(img.name(), top);
  }

  /**
   * Events.Subscribe to this namespace's task events, made before the task is created. The response
   * headers prove nothing portable (containerd sends them only with the first event), so the task's
   * own /tasks/create event is what shows the subscription is live before the task starts.
   */
  private final class TaskSubscription {
    private final LinkedBlockingQueue<Object> events = new LinkedBlockingQueue<>();
    private final ClientCall<SubscribeRequest, Envelope> call;

    TaskSubscription() {
      call =
          ClientInterceptors.intercept(berth.channel(), Berth.namespace(ns))
              .newCall(EventsGrpc.getSubscribeMethod(), CallOptions.DEFAULT);
      call.start(
          new ClientCall.Listener<>() {
            @Override
            public void onMessage(Envelope env) {
              events.add(env);
              call.request(1);
            }

            @Override
            public void onClose(Status status, Metadata trailers) {
              if (status.getCode() != Status.Code.CANCELLED) {
                events.add(status);
              }
            }
          },
          new Metadata());
      String filter = "topic~=\"/tasks/\",namespace==" + new Gson().toJson(ns);
      call.sendMessage(SubscribeRequest.newBuilder().addFilters(filter).build());
      call.halfClose();
      call.request(1);
    }

    /** Waits for the /tasks/create of {@code container}. */
    void created(String container) throws Failure, InterruptedException {
      until(CREATE_TOPIC, TaskCreate.parser(), TaskCreate::getContainerId, container);
    }

    /** The next exit of {@code container}'s init process. */
    TaskExit next(String container) throws Failure, InterruptedException {
      return until(EXIT_TOPIC, TaskExit.parser(), TaskExit::getContainerId, container);
    }

    /** The next event of {@code topic} about {@code container}; skips all others. */
    private <T> T until(
        String topic, Parser<T> parser, Function<T, String> containerOf, String container)
        throws Failure, InterruptedException {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(PATIENCE_SECONDS);
      for (; ; ) {
        Object o = events.poll(deadline - System.nanoTime(), TimeUnit.NANOSECONDS);
        if (o == null) {
          throw new Failure("the " + topic + " event: nothing within " + PATIENCE_SECONDS + "s");
        }
        if (o instanceof Status s) {
          throw new Failure("Events.Subscribe: " + s);
        }
        Envelope env = (Envelope) o;
        if (!env.getNamespace().equals(ns) || !env.getTopic().equals(topic)) {
          continue;
        }
        try {
          T event = parser.parseFrom(env.getEvent().getValue());
          if (containerOf.apply(event).equals(container)) {
            return event;
          }
        } catch (InvalidProtocolBufferException e) {
          throw new Failure("a " + topic + " event does not decode: " + e.getMessage(), e);
        }
      }
    }

    void cancel() {
      call.cancel("done", null);
    }
  }

  /** Reads a FIFO to its end on its own thread: the open blocks until the shim opens the FIFO. */
  private static CompletableFuture<String> readFifo(Path fifo) {
    CompletableFuture<String> out = new CompletableFuture<>();
    Thread t =
        new Thread(
            () -> {
              try {
                out.complete(new String(Files.readAllBytes(fifo), StandardCharsets.UTF_8));
              } catch (IOException e) {
                out.completeExceptionally(e);
              }
            },
            "fifo-reader");
    t.setDaemon(true);
    t.start();
    return out;
  }

  private static void mkfifo(Path path) throws Failure, IOException, InterruptedException {
    Process p = new ProcessBuilder("mkfifo", "-m", "0600", path.toString()).inheritIO().start();
    if (p.waitFor() != 0) {
      throw new Failure("mkfifo " + path + " failed");
    }
  }

  private void run(Path layout, Deque<Map.Entry<String, Step>> cleanups) throws Exception {
    String id = LANG + "-example";
    var md = Berth.namespace(ns);
    String version =
        rpc(
                "Version.Version",
                () ->
                    VersionGrpc.newBlockingStub(berth.channel())
                        .withInterceptors(md)
                        .version(Empty.getDefaultInstance()))
            .getVersion();
    System.out.println("connected to berthd " + version);

    // The lease keeps what the import creates from the garbage collector until the image and
    // the container reference it; it expires on its own if this program dies first.
    var leases = LeasesGrpc.newBlockingStub(berth.channel()).withInterceptors(md);
    String expire =
        Instant.now().plus(1, ChronoUnit.HOURS).truncatedTo(ChronoUnit.SECONDS).toString();
    String lease =
        rpc(
                "Leases.Create",
                () ->
                    leases.create(
                        LeasesOuterClass.CreateRequest.newBuilder()
                            .setId(LANG + "-example-" + ProcessHandle.current().pid())
                            .putLabels("containerd.io/gc.expire", expire)
                            .build()))
            .getLease()
            .getId();
    cleanups.push(
        Map.entry(
            "Leases.Delete",
            () ->
                rpc(
                    "Leases.Delete",
                    () ->
                        leases.delete(
                            LeasesOuterClass.DeleteRequest.newBuilder().setId(lease).build()))));
    System.out.println("created lease " + lease);
    var leased = Berth.namespace(ns, lease);

    Imported image = importImage(lease, layout);

    var snapshots = SnapshotsGrpc.newBlockingStub(berth.channel()).withInterceptors(md);
    rpc(
        "Snapshots.Prepare",
        () ->
            snapshots
                .withInterceptors(leased)
                .prepare(
                    PrepareSnapshotRequest.newBuilder()
                        .setSnapshotter(SNAPSHOTTER)
                        .setKey(id)
                        .setParent(image.top())
                        .build()));
    cleanups.push(
        Map.entry(
            "Snapshots.Remove",
            () ->
                rpc(
                    "Snapshots.Remove",
                    () ->
                        snapshots.remove(
                            RemoveSnapshotRequest.newBuilder()
                                .setSnapshotter(SNAPSHOTTER)
                                .setKey(id)
                                .build()))));
    System.out.println("prepared snapshot " + id + " on " + image.top());

    var spec =
        Oci.runtimeSpec(
            ns, id, List.of("sh", "-c", "echo " + WANT_OUTPUT + "; exit " + WANT_STATUS));
    var containers = ContainersGrpc.newBlockingStub(berth.channel()).withInterceptors(md);
    rpc(
        "Containers.Create",
        () ->
            containers
                .withInterceptors(leased)
                .create(
                    CreateContainerRequest.newBuilder()
                        .setContainer(
                            Container.newBuilder()
                                .setId(id)
                                .setImage(image.name())
                                .setRuntime(Container.Runtime.newBuilder().setName(RUNTIME))
                                .setSpec(
                                    Any.newBuilder()
                                        .setTypeUrl(SPEC_TYPE_URL)
                                        .setValue(ByteString.copyFromUtf8(new Gson().toJson(spec))))
                                .setSnapshotter(SNAPSHOTTER)
                                .setSnapshotKey(id))
                        .build()));
    cleanups.push(
        Map.entry(
            "Containers.Delete",
            () ->
                rpc(
                    "Containers.Delete",
                    () ->
                        containers.delete(DeleteContainerRequest.newBuilder().setId(id).build()))));
    System.out.println("created container " + id);

    Path dir = Files.createTempDirectory("berth-" + LANG + "-");
    Path stdout = dir.resolve("stdout");
    cleanups.push(
        Map.entry(
            "remove the FIFO directory",
            () -> {
              Files.deleteIfExists(stdout);
              Files.delete(dir);
            }));
    mkfifo(stdout);
    CompletableFuture<String> output = readFifo(stdout);
    TaskSubscription taskEvents = new TaskSubscription();
    cleanups.push(Map.entry("cancel the subscription", taskEvents::cancel));

    List<Mount> mounts =
        rpc(
                "Snapshots.Mounts",
                () ->
                    snapshots.mounts(
                        MountsRequest.newBuilder().setSnapshotter(SNAPSHOTTER).setKey(id).build()))
            .getMountsList();
    var tasks = TasksGrpc.newBlockingStub(berth.channel()).withInterceptors(md);
    int pid =
        rpc(
                "Tasks.Create",
                () ->
                    tasks.create(
                        CreateTaskRequest.newBuilder()
                            .setContainerId(id)
                            .addAllRootfs(mounts)
                            .setStdout(stdout.toString())
                            // containerd 1.6's runc shim opens a stderr even when its path is
                            // empty (and fails); sharing stdout's FIFO works with both daemons.
                            .setStderr(stdout.toString())
                            .build()))
            .getPid();
    cleanups.push(
        Map.entry(
            "Tasks.Delete",
            () ->
                rpc(
                    "Tasks.Delete",
                    () ->
                        tasks.delete(DeleteTaskRequest.newBuilder().setContainerId(id).build()))));
    System.out.println("created task " + id + " (pid " + pid + ")");
    taskEvents.created(id);

    // Wait is called before Start so that the exit cannot be missed.
    CompletableFuture<WaitResponse> waited = new CompletableFuture<>();
    TasksGrpc.newStub(berth.channel())
        .withInterceptors(md)
        .wait(
            WaitRequest.newBuilder().setContainerId(id).build(),
            new StreamObserver<>() {
              @Override
              public void onNext(WaitResponse r) {
                waited.complete(r);
              }

              @Override
              public void onError(Throwable t) {
                waited.completeExceptionally(new Failure("Tasks.Wait: " + t.getMessage(), t));
              }

              @Override
              public void onCompleted() {}
            });
    rpc("Tasks.Start", () -> tasks.start(StartRequest.newBuilder().setContainerId(id).build()));
    System.out.println("started task " + id);

    String text = await("the task's stdout", output).trim();
    int status = await("Tasks.Wait", waited).getExitStatus();
    TaskExit event = taskEvents.next(id);
    System.out.println("output: " + text);
    System.out.printf(
        "exit status %d; %s event: status %d%n", status, EXIT_TOPIC, event.getExitStatus());
    if (!text.equals(WANT_OUTPUT)) {
      throw new Failure("expected output \"" + WANT_OUTPUT + "\", got \"" + text + "\"");
    }
    if (status != WANT_STATUS || event.getExitStatus() != WANT_STATUS) {
      throw new Failure("expected exit status " + WANT_STATUS + " from Wait and the event");
    }
  }

  public static void main(String[] args) {
    int code = 0;
    try {
      String socket = env("BERTH_SOCKET");
      String ns = env("BERTH_NAMESPACE");
      Path layout = Path.of(env("BERTH_IMAGE_LAYOUT"));
      try (Berth berth = Berth.connect(Path.of(socket))) {
        Deque<Map.Entry<String, Step>> cleanups = new ArrayDeque<>();
        try {
          new Example(berth, ns).run(layout, cleanups);
        } finally {
          // Undo in reverse order of creation, each step whatever the others did.
          for (var c : cleanups) {
            try {
              c.getValue().run();
            } catch (Exception e) {
              code = 1;
              System.err.println("cleanup: " + c.getKey() + ": " + e.getMessage());
            }
          }
        }
      }
    } catch (Exception e) {
      System.err.println(LANG + " example failed: " + e.getMessage());
      System.exit(1);
    }
    if (code == 0) {
      System.out.println("example ok: hello from " + LANG + ", exit status " + WANT_STATUS);
    }
    System.exit(code);
  }
}
