package dev.berth.client;

import io.grpc.ClientInterceptor;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.MultiThreadIoEventLoopGroup;
import io.netty.channel.epoll.EpollDomainSocketChannel;
import io.netty.channel.epoll.EpollIoHandler;
import io.netty.channel.unix.DomainSocketAddress;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

/**
 * berth's Java client: a channel to berthd's unix socket, and the headers every call carries. The
 * stubs themselves ({@code containerd.services.*.v1.*Grpc}) are generated from berth's proto/ at
 * build time.
 *
 * <pre>{@code
 * try (Berth berth = Berth.connect(Path.of("/run/berth/berthd.sock"))) {
 *   var images =
 *       ImagesGrpc.newBlockingStub(berth.channel()).withInterceptors(Berth.namespace("default"));
 *   images.list(ListImagesRequest.getDefaultInstance());
 * }
 * }</pre>
 */
public final class Berth implements AutoCloseable {
  /** containerd's header naming the namespace of a call; berthd refuses calls without it. */
  public static final Metadata.Key<String> NAMESPACE_HEADER =
      Metadata.Key.of("containerd-namespace", Metadata.ASCII_STRING_MARSHALLER);

  /** containerd's header naming the lease that protects what a call creates from collection. */
  public static final Metadata.Key<String> LEASE_HEADER =
      Metadata.Key.of("containerd-lease", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  // A channel given its own event loops does not own them: closing this client shuts them down.
  private final EventLoopGroup group;

  private Berth(ManagedChannel channel, EventLoopGroup group) {
    this.channel = channel;
    this.group = group;
  }

  /**
   * A client of berthd listening on {@code socket}, with grpc-java's default channel options: Netty
   * over an epoll unix-domain socket. Connects lazily, on the first call.
   */
  public static Berth connect(Path socket) {
    EventLoopGroup group = new MultiThreadIoEventLoopGroup(1, EpollIoHandler.newFactory());
    ManagedChannel channel =
        NettyChannelBuilder.forAddress(new DomainSocketAddress(socket.toString()))
            .eventLoopGroup(group)
            .channelType(EpollDomainSocketChannel.class)
            .usePlaintext()
            .build();
    return new Berth(channel, group);
  }

  /** The channel, for the generated stubs' {@code newStub}/{@code newBlockingStub}. */
  public ManagedChannel channel() {
    return channel;
  }

  /** An interceptor putting every call of a stub in {@code namespace}. */
  public static ClientInterceptor namespace(String namespace) {
    Metadata headers = new Metadata();
    headers.put(NAMESPACE_HEADER, namespace);
    return MetadataUtils.newAttachHeadersInterceptor(headers);
  }

  /** An interceptor putting every call of a stub in {@code namespace}, under {@code lease}. */
  public static ClientInterceptor namespace(String namespace, String lease) {
    Metadata headers = new Metadata();
    headers.put(NAMESPACE_HEADER, namespace);
    headers.put(LEASE_HEADER, lease);
    return MetadataUtils.newAttachHeadersInterceptor(headers);
  }

  @Override
  public void close() {
    channel.shutdownNow();
    try {
      channel.awaitTermination(5, TimeUnit.SECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    group.shutdownGracefully(0, 5, TimeUnit.SECONDS);
  }
}
