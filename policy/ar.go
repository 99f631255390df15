package policy

import (
	"math"
	"time"
)

// arOrder is the order of the autoregressive model behind ForecastIdle.
const arOrder = 2

// ForecastIdle predicts the next idle time from past ones (oldest first) with an AR(2) model
// with intercept, x[t] = c + a1·x[t-1] + a2·x[t-2], fitted by ordinary least squares. This is
// the small time-series forecast the hybrid policy uses for functions whose idle times mostly
// exceed its histogram's range (the paper uses ARIMA; a least-squares AR model covers the
// same need for the mostly stationary series this sees). With too few samples for a fit, or
// a singular fit, it returns the mean. The forecast is clamped to the observed range widened
// by half, so one outlier cannot send it far off. It reports false when idle is empty.
func ForecastIdle(idle []time.Duration) (time.Duration, bool) {
	if len(idle) == 0 {
		return 0, false
	}
	x := make([]float64, len(idle))
	lo, hi, sum := math.Inf(1), math.Inf(-1), 0.0
	for i, d := range idle {
		x[i] = d.Seconds()
		lo, hi, sum = min(lo, x[i]), max(hi, x[i]), sum+x[i]
	}
	mean := sum / float64(len(x))
	pred, ok := fitAR2(x)
	if !ok {
		pred = mean
	}
	pred = min(max(pred, lo/2), hi*1.5)
	return time.Duration(pred * float64(time.Second)), true
}

// fitAR2 fits the AR(2) model by least squares and returns its one-step forecast.
func fitAR2(x []float64) (float64, bool) {
	const params = arOrder + 1
	if len(x) < arOrder+2*params {
		return 0, false
	}
	// Normal equations AᵀA·β = Aᵀy over rows (1, x[t-1], x[t-2]) → x[t].
	var ata [params][params]float64
	var aty [params]float64
	for t := arOrder; t < len(x); t++ {
		row := [params]float64{1, x[t-1], x[t-2]}
		for i := range params {
			aty[i] += row[i] * x[t]
			for j := range params {
				ata[i][j] += row[i] * row[j]
			}
		}
	}
	beta, ok := solve3(ata, aty)
	if !ok {
		return 0, false
	}
	n := len(x)
	return beta[0] + beta[1]*x[n-1] + beta[2]*x[n-2], true
}

// solve3 solves a 3×3 linear system by Gaussian elimination with partial pivoting; it reports
// false for a (numerically) singular matrix.
func solve3(a [3][3]float64, b [3]float64) ([3]float64, bool) {
	scale := 0.0
	for i := range 3 {
		for j := range 3 {
			scale = max(scale, math.Abs(a[i][j]))
		}
	}
	for col := range 3 {
		pivot := col
		for r := col + 1; r < 3; r++ {
			if math.Abs(a[r][col]) > math.Abs(a[pivot][col]) {
				pivot = r
			}
		}
		if math.Abs(a[pivot][col]) <= 1e-9*scale {
			return [3]float64{}, false
		}
		a[col], a[pivot] = a[pivot], a[col]
		b[col], b[pivot] = b[pivot], b[col]
		for r := col + 1; r < 3; r++ {
			f := a[r][col] / a[col][col]
			for c := col; c < 3; c++ {
				a[r][c] -= f * a[col][c]
			}
			b[r] -= f * b[col]
		}
	}
	var x [3]float64
	for r := 2; r >= 0; r-- {
		s := b[r]
		for c := r + 1; c < 3; c++ {
			s -= a[r][c] * x[c]
		}
		x[r] = s / a[r][r]
	}
	return x, true
}
