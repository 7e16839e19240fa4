// berth's TypeScript client: the generated @grpc/grpc-js clients for containerd's services (from
// proto/, by ts-proto, into src/gen/ at build time) and the two things that are not generated:
// reaching berthd's unix socket, and the metadata every call carries (namespace, lease).

import { credentials, Metadata } from "@grpc/grpc-js";
import { ContainersClient } from "./gen/containerd/services/containers/v1/containers";
import { ContentClient } from "./gen/containerd/services/content/v1/content";
import { DiffClient } from "./gen/containerd/services/diff/v1/diff";
import { EventsClient } from "./gen/containerd/services/events/v1/events";
import { ImagesClient } from "./gen/containerd/services/images/v1/images";
import { IntrospectionClient } from "./gen/containerd/services/introspection/v1/introspection";
import { LeasesClient } from "./gen/containerd/services/leases/v1/leases";
import { NamespacesClient } from "./gen/containerd/services/namespaces/v1/namespace";
import { SnapshotsClient } from "./gen/containerd/services/snapshots/v1/snapshots";
import { TasksClient } from "./gen/containerd/services/tasks/v1/tasks";
import { VersionClient } from "./gen/containerd/services/version/v1/version";

/** containerd's header naming the namespace of a call; berthd refuses calls without it. */
export const NAMESPACE_HEADER = "containerd-namespace";
/** containerd's header naming the lease that protects what a call creates from garbage collection. */
export const LEASE_HEADER = "containerd-lease";

/** One client per containerd service, all on the same socket. */
export interface Berth {
  containers: ContainersClient;
  content: ContentClient;
  diff: DiffClient;
  events: EventsClient;
  images: ImagesClient;
  introspection: IntrospectionClient;
  leases: LeasesClient;
  namespaces: NamespacesClient;
  snapshots: SnapshotsClient;
  tasks: TasksClient;
  version: VersionClient;
  /** Closes every client's channel. */
  close(): void;
}

/** grpc-js's target for a unix socket path: `unix:` followed by the path. */
export function unixTarget(socketPath: string): string {
  return `unix:${socketPath}`;
}

/**
 * Clients for berthd listening on `socketPath`, with grpc-js's default options (connections are
 * made lazily, on the first call). grpc-js shares one connection among clients of the same target.
 */
export function connect(socketPath: string): Berth {
  const target = unixTarget(socketPath);
  const creds = credentials.createInsecure();
  const clients = {
    containers: new ContainersClient(target, creds),
    content: new ContentClient(target, creds),
    diff: new DiffClient(target, creds),
    events: new EventsClient(target, creds),
    images: new ImagesClient(target, creds),
    introspection: new IntrospectionClient(target, creds),
    leases: new LeasesClient(target, creds),
    namespaces: new NamespacesClient(target, creds),
    snapshots: new SnapshotsClient(target, creds),
    tasks: new TasksClient(target, creds),
    version: new VersionClient(target, creds),
  };
  return {
    ...clients,
    close() {
      for (const c of Object.values(clients)) c.close();
    },
  };
}

/** Metadata for a call in `namespace`, and under `lease` when given. */
export function namespaced(namespace: string, lease?: string): Metadata {
  const md = new Metadata();
  md.set(NAMESPACE_HEADER, namespace);
  if (lease !== undefined) md.set(LEASE_HEADER, lease);
  return md;
}
