// kstatus prints the status that sigs.k8s.io/cli-utils/pkg/kstatus (the reference implementation Flux's
// `wait: true` and kpt use) computes for each Kubernetes object it reads: a JSON object, or a JSON List of them, on
// stdin. One line per object: {"kind":…,"name":…,"status":"Current|InProgress|Failed|…","message":…}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sjson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading stdin:", err)
		os.Exit(2)
	}
	var doc map[string]interface{}
	// apimachinery's decoder keeps integers int64 (encoding/json would make them float64, which kstatus refuses).
	if err := k8sjson.Unmarshal(data, &doc); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: stdin is not a JSON object:", err)
		os.Exit(2)
	}
	objects := []map[string]interface{}{doc}
	if items, ok := doc["items"].([]interface{}); ok {
		objects = objects[:0]
		for _, item := range items {
			if m, ok := item.(map[string]interface{}); ok {
				objects = append(objects, m)
			}
		}
	}
	out := json.NewEncoder(os.Stdout)
	for _, obj := range objects {
		u := &unstructured.Unstructured{Object: obj}
		res, err := status.Compute(u)
		r := result{Kind: u.GetKind(), Name: u.GetName()}
		if err != nil {
			r.Status, r.Message = "Error", err.Error()
		} else {
			r.Status, r.Message = res.Status.String(), res.Message
		}
		if err := out.Encode(r); err != nil {
			os.Exit(2)
		}
	}
}
