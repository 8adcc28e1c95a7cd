//go:build race

package handnet_test

// raceDetector: the race detector's shadow memory multiplies the process's
// RSS, so absolute RSS limits do not apply under -race (growth limits do).
const raceDetector = true
