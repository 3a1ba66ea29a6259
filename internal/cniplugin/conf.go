package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// Decode unmarshals a config from stdin: malformed JSON is code 6, a field of
// the wrong type code 7 naming the field.
func Decode(stdin []byte, v any) error {
	if err := json.Unmarshal(stdin, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return InvalidConfig("config field %q: %s is not a valid %s", te.Field, te.Value, te.Type)
		}
		return WithCode(CodeDecode, fmt.Errorf("decode network config: %w", err))
	}
	return nil
}

// ParseArgs loads CNI_ARGS (K=V;K=V) into v, a struct embedding
// types.CommonArgs; unknown keys are an error unless IgnoreUnknown=1.
func ParseArgs(cniArgs string, v any) error {
	if err := types.LoadArgs(cniArgs, v); err != nil {
		return Errorf(CodeInvalidEnv, "CNI_ARGS: %w", err)
	}
	return nil
}

// PrevResult parses conf's prevResult into the current result type; nil when
// the config carries none.
func PrevResult(conf *types.PluginConf) (*current.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, nil
	}
	if err := version.ParsePrevResult(conf); err != nil {
		return nil, WithCode(CodeDecode, fmt.Errorf("parse prevResult: %w", err))
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, WithCode(CodeDecode, fmt.Errorf("convert prevResult: %w", err))
	}
	return res, nil
}

// Attachment is one (container ID, ifname) pair a runtime still uses.
type Attachment = types.GCAttachment

// ValidAttachments reads the attachments a GC call keeps, from either the
// spec's key or the older misspelt one libcni also sends.
func ValidAttachments(stdin []byte) (map[Attachment]bool, error) {
	var gc struct {
		Valid []Attachment `json:"cni.dev/valid-attachments"`
		Old   []Attachment `json:"cni.dev/attachments"`
	}
	if err := Decode(stdin, &gc); err != nil {
		return nil, err
	}
	keep := make(map[Attachment]bool, len(gc.Valid)+len(gc.Old))
	for _, a := range append(gc.Valid, gc.Old...) {
		keep[a] = true
	}
	return keep, nil
}

// Args are the CNI_ARGS keys runtimes send (kubelet/CRI, podman, nerdctl).
// Every plugin parses them so that an unknown key fails the same way
// everywhere: only without IgnoreUnknown=1.
type Args struct {
	types.CommonArgs
	IP                         types.UnmarshallableString `json:"ip,omitempty"`
	MAC                        types.UnmarshallableString `json:"mac,omitempty"`
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // key names are fixed by kubelet
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}
