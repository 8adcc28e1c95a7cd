//go:build !race

package handnet_test

const raceDetector = false
