package clients

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"time"
)

// OCI media types of the one-layer image below.
const (
	ociManifestType = "application/vnd.oci.image.manifest.v1+json"
	ociConfigType   = "application/vnd.oci.image.config.v1+json"
	ociLayerType    = "application/vnd.oci.image.layer.v1.tar"
)

// ociDescriptor points at a blob of the archive.
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ociArchive writes an OCI image layout tar (what `ctr images import`
// reads) holding one image named ref whose only file is the static binary
// bin as /pause, its entrypoint. No registry is reachable, so the pod
// sandbox image is built here.
func ociArchive(path, ref, bin string) error {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	mtime := time.Unix(0, 0)
	if err := lw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(exe)), Typeflag: tar.TypeReg, ModTime: mtime}); err != nil {
		return err
	}
	if _, err := lw.Write(exe); err != nil {
		return err
	}
	if err := lw.Close(); err != nil {
		return err
	}
	blobs := map[string][]byte{}
	add := func(mediaType string, b []byte) ociDescriptor {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[hex.EncodeToString(sum[:])] = b
		return ociDescriptor{MediaType: mediaType, Digest: d, Size: len(b)}
	}
	layerDesc := add(ociLayerType, layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{"/pause"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	})
	configDesc := add(ociConfigType, config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     ociManifestType,
		"config":        configDesc,
		"layers":        []ociDescriptor{layerDesc},
	})
	manifestDesc := add(ociManifestType, manifest)
	manifestDesc.Annotations = map[string]string{"io.containerd.image.name": ref}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []ociDescriptor{manifestDesc}})

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := tar.NewWriter(f)
	file := func(name string, b []byte) error {
		if err := w.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: mtime}); err != nil {
			return err
		}
		_, err := w.Write(b)
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	for sum, b := range blobs {
		if err := file("blobs/sha256/"+sum, b); err != nil {
			return err
		}
	}
	if err := file("index.json", index); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
