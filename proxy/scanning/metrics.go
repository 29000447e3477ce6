package scanning

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the scanner's Prometheus metrics.
type Metrics struct {
	scans      *prometheus.CounterVec
	duration   prometheus.Histogram
	layerBytes prometheus.Counter
	findings   *prometheus.CounterVec
	rematched  prometheus.Counter
	queued     prometheus.Gauge
	running    prometheus.Gauge
}

// NewMetrics registers the metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_scans_total", Help: "Image scans by outcome (complete, incomplete, failed)."}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gatehouse_scan_duration_seconds", Help: "Time to scan one image.",
			Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}}),
		layerBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_scan_layer_bytes_read_total", Help: "Layer bytes (as stored) read by scans; a database update reads none."}),
		findings:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_scan_findings_total", Help: "Findings recorded, by kind and severity."}, []string{"kind", "severity"}),
		rematched:  prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_scan_rematched_total", Help: "Stored inventories re-matched after a vulnerability database update."}),
		queued:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "gatehouse_scans_queued", Help: "Scans waiting for a free slot (scan.workers run at once)."}),
		running:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "gatehouse_scans_running", Help: "Scans running now; never more than scan.workers."}),
	}
	if reg != nil {
		reg.MustRegister(m.scans, m.duration, m.layerBytes, m.findings, m.rematched, m.queued, m.running)
	}
	return m
}

func (m *Metrics) scanned(outcome string, took time.Duration) {
	m.scans.WithLabelValues(outcome).Inc()
	m.duration.Observe(took.Seconds())
}

func (m *Metrics) finding(kind, severity string) { m.findings.WithLabelValues(kind, severity).Inc() }
