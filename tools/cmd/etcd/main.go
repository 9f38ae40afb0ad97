// Command etcd is the stock etcd server, built from the version of
// go.etcd.io/etcd/server/v3 that the pinned Kubernetes release depends on.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
