package gate

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	refusals         *prometheus.CounterVec
	admissions       prometheus.Counter
	admissionSeconds prometheus.Histogram
	held             prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_gate_refusals_total",
			Help: "Requests the gate refused because what they asked for is not admitted, by kind (manifest, blob)."}, []string{"kind"}),
		admissions: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_gate_admissions_total",
			Help: "Admissions the gate ran for undecided manifests (one per digest, however many requests waited)."}),
		admissionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gatehouse_gate_admission_seconds",
			Help: "How long an admission took (fetch, scan, match, evaluate, record).", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		held: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_gate_hold_expired_total",
			Help: "Requests answered 503 because their admission outlasted admission.hold."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.refusals, m.admissions, m.admissionSeconds, m.held} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
