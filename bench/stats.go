package main

import (
	"math"
	"slices"
	"time"
)

// Stats summarises the latencies of one kind of call.
type Stats struct {
	Count    int     `json:"count"`
	Failures int     `json:"failures"`
	P50      float64 `json:"p50_ms"`
	P90      float64 `json:"p90_ms"`
	P99      float64 `json:"p99_ms"`
	Mean     float64 `json:"mean_ms"`
	Max      float64 `json:"max_ms"`
	// PerSec is calls per second one caller gets doing them back to back
	// (1000 / mean).
	PerSec float64 `json:"per_s"`
}

// summarize computes Stats over the successful calls' durations.
func summarize(ds []time.Duration, failures int) Stats {
	s := Stats{Count: len(ds), Failures: failures}
	if len(ds) == 0 {
		return s
	}
	ms := make([]float64, len(ds))
	var sum float64
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
		sum += ms[i]
	}
	slices.Sort(ms)
	s.P50, s.P90, s.P99 = percentile(ms, 50), percentile(ms, 90), percentile(ms, 99)
	s.Mean = sum / float64(len(ms))
	s.Max = ms[len(ms)-1]
	if s.Mean > 0 {
		s.PerSec = 1000 / s.Mean
	}
	return s
}

// percentile is the nearest-rank percentile of sorted values: the smallest
// value at least p% of the values are at or below.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[min(rank, len(sorted))-1]
}

// ratio is a/b, or 0 when either is unknown.
func ratio(a, b float64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return a / b
}
