package pull

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/proxy/route"
)

// Metrics are the pull-through cache's Prometheus metrics.
type Metrics struct {
	upstreamReqs  *prometheus.CounterVec
	cacheRequests *prometheus.CounterVec
	upBytes       *prometheus.CounterVec
	srvBytes      *prometheus.CounterVec
	companions    *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg (nil: not registered anywhere).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		upstreamReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_upstream_requests_total",
			Help: "Requests to upstream registries by route, kind (manifest, blob, tags, referrers) and status (0: unreachable).",
		}, []string{"route", "kind", "status"}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_cache_requests_total",
			Help: "Pull-route lookups by route, kind and result (hit, miss, revalidated, stale, shared).",
		}, []string{"route", "kind", "result"}),
		upBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_upstream_bytes_total",
			Help: "Blob bytes read from upstream registries, by route.",
		}, []string{"route"}),
		srvBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_served_bytes_total",
			Help: "Blob bytes sent to clients of pull routes, by route (from the cache and streamed from the upstream).",
		}, []string{"route"}),
		companions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_companions_fetched_total",
			Help: "Signatures, attestations, SBOMs (cosign tags) and OCI referrers fetched along with manifests, by route and kind.",
		}, []string{"route", "kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.upstreamReqs, m.cacheRequests, m.upBytes, m.srvBytes, m.companions)
	}
	return m
}

// Upstream returns the observer an upstream client of route prefix reports its responses to.
func (m *Metrics) Upstream(prefix string) func(kind string, status int) {
	return func(kind string, status int) {
		m.upstreamReqs.WithLabelValues(prefix, kind, strconv.Itoa(status)).Inc()
	}
}

func (m *Metrics) cache(rt route.Resolved, kind, result string) {
	m.cacheRequests.WithLabelValues(rt.Route.Prefix, kind, result).Inc()
}

func (m *Metrics) upstreamBytes(rt route.Resolved, n int64) {
	m.upBytes.WithLabelValues(rt.Route.Prefix).Add(float64(n))
}

func (m *Metrics) servedBytes(rt route.Resolved, n int64) {
	m.srvBytes.WithLabelValues(rt.Route.Prefix).Add(float64(n))
}

func (m *Metrics) companion(rt route.Resolved, kind string) {
	m.companions.WithLabelValues(rt.Route.Prefix, kind).Inc()
}
