//go:build tools

// Package tools pins Multus (its thin plugin, cmd/multus) for the test
// cluster; scripts/build-cluster.sh builds the plugin from this module.
package tools

import _ "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/pkg/multus"
