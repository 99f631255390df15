package bdd

import (
	"fmt"
	"sort"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are bdd's own Prometheus metrics; remotefetch registers its own.
type metrics struct {
	devices      prometheus.Gauge
	attachErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		devices: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "obd", Subsystem: "bdd", Name: "devices",
			Help: "Number of attached devices.",
		}),
		attachErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "obd", Subsystem: "bdd", Name: "attach_errors_total",
			Help: "Attach requests that failed.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.devices, m.attachErrors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("bdd: metrics: %w", err)
			}
		}
	}
	return m, nil
}

func sortDevices(ds []*bddv1.Device) {
	sort.Slice(ds, func(i, j int) bool { return ds[i].GetId() < ds[j].GetId() })
}
