// Package config is Gatehouse's one typed configuration: decoded strictly from YAML (an unknown
// key is an error), completed with defaults, and validated with messages that name the key.
package config
