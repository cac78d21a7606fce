package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// DefinitionInfo describes a definition without its Go type: what an
// operator tool draws a saga's diagram from. Definition.Describe returns
// it; orchestrators record it in sagabox.saga_definitions when they start,
// and Admin.Definition reads it back.
type DefinitionInfo struct {
	Type    string     `json:"type"`
	Version int        `json:"version"`
	Steps   []StepInfo `json:"steps"`
}

// StepInfo is one step of a DefinitionInfo.
type StepInfo struct {
	Name string   `json:"name"`
	Kind StepKind `json:"kind"`
	// Local is true for a step that runs in the orchestrator's
	// transaction; otherwise Command goes to Topic.
	Local   bool   `json:"local,omitempty"`
	Command string `json:"command,omitempty"`
	Topic   string `json:"topic,omitempty"`
	// Compensation: the step has one; CompensationLocal, or
	// CompensationCommand to CompensationTopic.
	Compensation        bool   `json:"compensation,omitempty"`
	CompensationLocal   bool   `json:"compensation_local,omitempty"`
	CompensationCommand string `json:"compensation_command,omitempty"`
	CompensationTopic   string `json:"compensation_topic,omitempty"`
}

// Describe returns the definition's steps as data.
func (d *Definition[D]) Describe() DefinitionInfo {
	di := DefinitionInfo{Type: d.name, Version: d.version, Steps: make([]StepInfo, len(d.steps))}
	for i, st := range d.steps {
		si := StepInfo{Name: st.Name, Kind: st.Kind, Local: st.Local != nil, Compensation: st.hasCompensation(),
			CompensationLocal: st.CompensateLocal != nil}
		if st.Invoke != nil {
			si.Command, si.Topic = st.Invoke.Command, st.Invoke.Topic
		}
		if st.Compensate != nil {
			si.CompensationCommand, si.CompensationTopic = st.Compensate.Command, st.Compensate.Topic
		}
		di.Steps[i] = si
	}
	return di
}

func (di DefinitionInfo) stepKinds() []stepKind {
	ks := make([]stepKind, len(di.Steps))
	for i, st := range di.Steps {
		ks[i] = stepKind{Name: st.Name, Kind: st.Kind}
	}
	return ks
}

// recordDefinitions writes the definitions into sagabox.saga_definitions
// (once, when an orchestrator starts).
func recordDefinitions(ctx context.Context, db Querier, defs ...DefinitionInfo) error {
	for _, d := range defs {
		steps, err := json.Marshal(d.Steps)
		if err != nil {
			return err
		}
		_, err = db.Exec(ctx, `INSERT INTO sagabox.saga_definitions (saga_type, version, steps) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (saga_type, version) DO UPDATE SET steps = EXCLUDED.steps, registered_at = now()
WHERE saga_definitions.steps IS DISTINCT FROM EXCLUDED.steps`, d.Type, d.Version, string(steps))
		if err != nil {
			return fmt.Errorf("saga: record definition %s version %d (run saga.Migrate): %w", d.Type, d.Version, err)
		}
	}
	return nil
}

// Definition returns the definition of sagaType at version: the one given
// to NewAdmin, or else the one an orchestrator recorded in the database
// when it started. It returns ErrNotFound when neither has it.
func (a *Admin) Definition(ctx context.Context, sagaType string, version int) (*DefinitionInfo, error) {
	if d, ok := a.infos[sagaType][version]; ok {
		return &d, nil
	}
	return loadDefinition(ctx, a.db, sagaType, version)
}

func loadDefinition(ctx context.Context, db Querier, sagaType string, version int) (*DefinitionInfo, error) {
	var raw []byte
	err := db.QueryRow(ctx, `SELECT steps FROM sagabox.saga_definitions WHERE saga_type = $1 AND version = $2`, sagaType, version).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: definition %s version %d (no orchestrator of it has started on this database)", ErrNotFound, sagaType, version)
	}
	if err != nil {
		return nil, fmt.Errorf("saga: definition %s version %d: %w", sagaType, version, err)
	}
	d := &DefinitionInfo{Type: sagaType, Version: version}
	if err := json.Unmarshal(raw, &d.Steps); err != nil {
		return nil, fmt.Errorf("saga: definition %s version %d: %w", sagaType, version, err)
	}
	return d, nil
}

// CurrentStep names the saga's current step (the one being run or
// compensated, or where it failed) from its definition, which may be nil;
// "" once it succeeded or was compensated.
func (i *Info) CurrentStep(def *DefinitionInfo) string {
	switch {
	case i.Status == StatusSucceeded || i.Status == StatusCompensated:
		return ""
	case def != nil && i.Step >= 0 && i.Step < len(def.Steps):
		return def.Steps[i.Step].Name
	case i.Deadline != nil && i.StepName != "":
		return i.StepName // awaiting this step's reply
	}
	return fmt.Sprintf("step %d", i.Step)
}
