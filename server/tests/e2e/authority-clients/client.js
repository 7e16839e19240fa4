// Calls berthd the way a Node.js program using @grpc/grpc-js does, with the library's default
// options. Usage: node client.js SOCKET NAMESPACE. Prints "<call> <hex of the response>" per call
// so the Rust test decodes the replies itself; no generated code is needed.
"use strict";

const grpc = require("@grpc/grpc-js");

const VERSION = "/containerd.services.version.v1.Version/Version";
const LIST_CONTAINERS = "/containerd.services.containers.v1.Containers/List";

const raw = (b) => b;

function call(client, path, metadata) {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      path,
      raw,
      raw,
      Buffer.alloc(0),
      metadata,
      { deadline: Date.now() + 20000 },
      (err, reply) => (err ? reject(err) : resolve(reply)),
    );
  });
}

async function main() {
  const [socket, namespace] = process.argv.slice(2);
  const client = new grpc.Client(
    `unix:${socket}`,
    grpc.credentials.createInsecure(),
  );
  const version = await call(client, VERSION, new grpc.Metadata());
  console.log("version", version.toString("hex"));
  const metadata = new grpc.Metadata();
  metadata.set("containerd-namespace", namespace);
  const containers = await call(client, LIST_CONTAINERS, metadata);
  console.log("containers", containers.toString("hex"));
  client.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
