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
	// registryTraces counts FetchTrace answers by result: found, none, refused (a bad
	// request or artifact), error (the registry could not be asked).
	registryTraces *prometheus.CounterVec
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
		registryTraces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "obd", Subsystem: "bdd", Name: "registry_traces_total",
			Help: "Start-trace lookups in the registry (FetchTrace), by result: found, none, refused, error.",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.devices, m.attachErrors, m.registryTraces} {
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
