package upstream

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
)

// CredentialsFile reads {"username": "...", "password": "..."} (or {"token": "..."} for a
// registry token) from a file. The secret never appears in errors.
func CredentialsFile(path string) (authn.Authenticator, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	var c struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Token    string `json:"token"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("credentials %s: not a JSON object with username and password", path)
	}
	if c.Token != "" {
		return authn.FromConfig(authn.AuthConfig{RegistryToken: c.Token}), nil
	}
	if c.Username == "" || c.Password == "" {
		return nil, fmt.Errorf("credentials %s: username and password are both required", path)
	}
	return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password}), nil
}

// DockerConfig reads a Docker config.json and returns the credentials it holds for host
// (credential helpers are not run). Docker Hub's hosts share the index.docker.io entry.
func DockerConfig(path, host string) (authn.Authenticator, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("docker config: %w", err)
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("docker config %s: %w", path, err)
	}
	key := host
	switch host {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		key = "https://index.docker.io/v1/"
	}
	ac, ok := cf.AuthConfigs[key]
	if !ok {
		return nil, fmt.Errorf("docker config %s has no credentials for %s", path, key)
	}
	if ac.Username == "" && ac.Auth != "" {
		// config.LoadFromReader decodes "auth" into Username and Password; nothing left means
		// it could not.
		return nil, fmt.Errorf("docker config %s: the entry for %s could not be decoded", path, key)
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: ac.Username, Password: ac.Password, IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
	}), nil
}
