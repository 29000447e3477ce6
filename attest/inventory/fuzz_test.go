package inventory

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/osv-scalibr/extractor/filesystem"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
)

// FuzzJavaArchive: no archive (a pushed jar, or one nested in it) makes the Java archive walk
// panic, and it leaves none of its files behind.
func FuzzJavaArchive(f *testing.F) {
	pom := []byte("groupId=g\nartifactId=a\nversion=1\n")
	f.Add(inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/g/a/pom.properties", Body: bytes.NewReader(pom)}))
	f.Add(inventorytest.Jar(inventorytest.Entry{Name: "lib/in.jar", Entries: []inventorytest.Entry{{Name: "META-INF/MANIFEST.MF", Body: bytes.NewReader([]byte("Manifest-Version: 1.0\nImplementation-Title: x\n"))}}}))
	f.Add(inventorytest.Jar(inventorytest.Entry{Name: "lib/zeros.jar", Body: inventorytest.Zeros(1 << 16)}))
	f.Add([]byte("PK\x05\x06\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "a.jar")
		os.WriteFile(p, b, 0o644)
		file, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		info, _ := file.Stat()
		g := &guard{lim: Limits{MaxPackages: 100, MaxMetadataFile: 1 << 20, MaxNestedArchive: 1 << 20}, cancel: func() {}, tempDir: dir, tempPrefix: "nested-"}
		g.javaArchive(context.Background(), &filesystem.ScanInput{Path: "a.jar", Info: info, Reader: file})
		if left, _ := filepath.Glob(filepath.Join(dir, "nested-*")); len(left) > 0 {
			t.Fatalf("nested archives left behind: %v", left)
		}
	})
}
