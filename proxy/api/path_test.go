package api

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
)

func TestParsePath(t *testing.T) {
	const d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	tests := []struct {
		path     string
		want     Target
		wantCode string // non-empty: an error with this OCI code
	}{
		{"/v2/", Target{Kind: KindBase}, ""},
		{"/v2", Target{Kind: KindBase}, ""},
		{"/v2/_catalog", Target{Kind: KindCatalog}, ""},
		{"/v2/alpine/manifests/3.20", Target{Kind: KindManifest, Name: "alpine", Ref: "3.20"}, ""},
		{"/v2/library/alpine/manifests/" + d, Target{Kind: KindManifest, Name: "library/alpine", Ref: d}, ""},
		{"/v2/a/b/c/blobs/" + d, Target{Kind: KindBlob, Name: "a/b/c", Ref: d}, ""},
		{"/v2/a/blobs/uploads/", Target{Kind: KindUploadStart, Name: "a", Ref: ""}, ""},
		{"/v2/a/blobs/uploads", Target{Kind: KindUploadStart, Name: "a", Ref: ""}, ""},
		{"/v2/a/blobs/uploads/6f1c2a1e-2c2b-4c55-9d7e-0a1b2c3d4e5f", Target{Kind: KindUpload, Name: "a", Ref: "6f1c2a1e-2c2b-4c55-9d7e-0a1b2c3d4e5f"}, ""},
		{"/v2/team/app/tags/list", Target{Kind: KindTags, Name: "team/app", Ref: ""}, ""},
		{"/v2/team/app/referrers/" + d, Target{Kind: KindReferrers, Name: "team/app", Ref: d}, ""},
		// names may contain the endpoint words as components; the suffix is matched from the end
		{"/v2/manifests/blobs/manifests/v1", Target{Kind: KindManifest, Name: "manifests/blobs", Ref: "v1"}, ""},
		{"/v2/tags/list/tags/list", Target{Kind: KindTags, Name: "tags/list", Ref: ""}, ""},
		{"/v2/blobs/blobs/" + d, Target{Kind: KindBlob, Name: "blobs", Ref: d}, ""},
		// bad names
		{"/v2/../etc/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/a/../b/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/a%2Fb/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/a%2F..%2Fb/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/%2e%2e/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/Upper/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/a//b/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2//manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/a-/manifests/latest", Target{}, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 256) + "/tags/list", Target{}, "NAME_INVALID"},
		{"/v2/a/manifests/", Target{}, "MANIFEST_INVALID"},
		{"/v2/a/blobs/uploads/..%2f..", Target{}, "BLOB_UPLOAD_UNKNOWN"},
		{"/v2/a/nothing/here", Target{}, "UNSUPPORTED"},
		{"/v3/a/manifests/x", Target{}, "UNSUPPORTED"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := ParsePath(tt.path, 255)
			if tt.wantCode != "" {
				var e *apierr.Error
				if !errors.As(err, &e) || e.Code.String() != tt.wantCode {
					t.Fatalf("ParsePath(%q) = %+v, %v; want error %s", tt.path, got, err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePath(%q): %v", tt.path, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParsePath(%q) (-want +got):\n%s", tt.path, diff)
			}
		})
	}
}

func TestValidateTag(t *testing.T) {
	for _, ok := range []string{"latest", "3.20", "_x", "A-b.c_d", strings.Repeat("a", 128)} {
		if err := ValidateTag(ok); err != nil {
			t.Errorf("ValidateTag(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", ".x", "-x", "a/b", "a:b", strings.Repeat("a", 129), "a%20b"} {
		if err := ValidateTag(bad); err == nil {
			t.Errorf("ValidateTag(%q) = nil, want error", bad)
		}
	}
}

func TestParseDigest(t *testing.T) {
	allowed := []digest.Algorithm{digest.SHA256, digest.SHA512}
	good := digest.SHA512.FromString("x").String()
	if _, err := ParseDigest(good, allowed); err != nil {
		t.Errorf("ParseDigest(sha512) = %v", err)
	}
	for _, bad := range []string{"sha256:xyz", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256", digest.SHA384.FromString("x").String()} {
		if _, err := ParseDigest(bad, allowed); err == nil {
			t.Errorf("ParseDigest(%q) = nil error", bad)
		}
	}
}
