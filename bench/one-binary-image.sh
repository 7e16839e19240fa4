# Sourced by bench scripts: one_binary_image DIR NAME ARCHIVE writes ARCHIVE, an OCI archive of a
# one-layer image NAME whose layer is static busybox as /bin/sh and /bin/true (DIR is scratch).
one_binary_image() {
	local d=$1 name=$2 archive=$3
	mkdir -p "$d/rootfs/bin" "$d/oci/blobs/sha256"
	cp /bin/busybox "$d/rootfs/bin/busybox"
	ln -s busybox "$d/rootfs/bin/sh"
	ln -s busybox "$d/rootfs/bin/true"
	tar -C "$d/rootfs" --owner=0 --group=0 --mtime=@0 --sort=name -cf "$d/layer.tar" bin
	local layer diff config manifest
	diff=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
	gzip -n -c "$d/layer.tar" >"$d/layer.tgz"
	layer=$(sha256sum "$d/layer.tgz" | cut -d' ' -f1)
	cp "$d/layer.tgz" "$d/oci/blobs/sha256/$layer"
	printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" >"$d/config.json"
	config=$(sha256sum "$d/config.json" | cut -d' ' -f1)
	cp "$d/config.json" "$d/oci/blobs/sha256/$config"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
		"$config" "$(stat -c %s "$d/config.json")" "$layer" "$(stat -c %s "$d/layer.tgz")" >"$d/manifest.json"
	manifest=$(sha256sum "$d/manifest.json" | cut -d' ' -f1)
	cp "$d/manifest.json" "$d/oci/blobs/sha256/$manifest"
	printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
		"$manifest" "$(stat -c %s "$d/manifest.json")" "$name" >"$d/oci/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci/oci-layout"
	tar -C "$d/oci" -cf "$archive" .
}
