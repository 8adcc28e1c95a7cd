module github.com/handnet/handnet

go 1.26

require (
	github.com/sirupsen/logrus v1.9.3
	github.com/spf13/pflag v1.0.10
	github.com/sugarme/gotch v0.9.1
)

require golang.org/x/sys v0.0.0-20220715151400-c0bba94af5f8 // indirect
