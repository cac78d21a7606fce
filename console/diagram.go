package console

import (
	"fmt"

	"github.com/sagabox/sagabox/saga"
)

// diagram is a definition drawn as SVG shapes, server-side: the steps left
// to right, their compensations below them right to left, and the three
// ends. Classes mark what the saga did: ok (taken), bad (failed there),
// current (the attempt in flight or the step it waits on), idle.
type diagram struct {
	Width, Height int
	Nodes         []node
	Edges         []edge
}

type node struct {
	X, Y, W, H int
	Label, Sub string
	Kind       string // compensatable, pivot, retriable, end, undo
	Class      string
	ID         string // data-step attribute, for tests and the browser
}

type edge struct {
	X1, Y1, X2, Y2 int
	Class          string
}

const (
	boxW, boxH = 190, 58
	gapX       = 36
	endW       = 110
	rowTop     = 20
	rowBottom  = 130
)

func drawDiagram(def *saga.DefinitionInfo, info *saga.Info, derived bool) diagram {
	n := len(def.Steps)
	var d diagram
	// The compensated end sits at the left of the undo row, where the
	// compensations end; the steps start right of it.
	x := func(i int) int { return 20 + endW + gapX + i*(boxW+gapX) }
	d.Width = x(n) + endW + 20
	d.Height = rowBottom + boxH + 20

	// What the history says.
	fwdOK, undoOK, undoRan := map[int]bool{}, map[int]bool{}, map[int]bool{}
	for _, a := range info.History {
		if a.Outcome == saga.OutcomeSucceeded {
			if a.Compensation {
				undoOK[a.Step] = true
			} else {
				fwdOK[a.Step] = true
			}
		}
		if a.Compensation {
			undoRan[a.Step] = true
		}
	}
	failedAt := -1
	if info.Failure != nil {
		failedAt = info.Failure.Step
	}
	stoppedHere := func(i int, comp bool) bool {
		return info.Status == saga.StatusFailed && info.Step == i && info.Compensation == comp
	}
	current := func(i int, comp bool) bool {
		return !info.Status.Finished() && info.Step == i && info.Compensation == comp
	}

	for i, st := range def.Steps {
		sub := "local"
		if !st.Local && st.Command != "" {
			sub = st.Command + " → " + st.Topic
		}
		kind := st.Kind.String()
		if derived {
			kind, sub = "", "(from history)"
		}
		cls := "idle"
		switch {
		case current(i, false):
			cls = "current"
		case i == failedAt || stoppedHere(i, false):
			cls = "bad"
		case fwdOK[i]:
			cls = "ok"
		}
		d.Nodes = append(d.Nodes, node{X: x(i), Y: rowTop, W: boxW, H: boxH, Label: st.Name, Sub: shorten(sub, 30), Kind: kind, Class: cls,
			ID: fmt.Sprintf("step-%d", i)})
		next := x(i+1) - 2
		d.Edges = append(d.Edges, edge{X1: x(i) + boxW, Y1: rowTop + boxH/2, X2: next, Y2: rowTop + boxH/2, Class: edgeClass(fwdOK[i])})
		if !st.Compensation {
			continue
		}
		csub := "local"
		if st.CompensationCommand != "" {
			csub = st.CompensationCommand + " → " + st.CompensationTopic
		}
		if derived {
			csub = "(from history)"
		}
		ccls := "idle"
		switch {
		case current(i, true):
			ccls = "current"
		case stoppedHere(i, true):
			ccls = "bad"
		case undoOK[i]:
			ccls = "ok"
		case undoRan[i]:
			ccls = "bad"
		}
		d.Nodes = append(d.Nodes, node{X: x(i), Y: rowBottom, W: boxW, H: boxH, Label: "undo " + st.Name, Sub: shorten(csub, 30), Kind: "undo", Class: ccls,
			ID: fmt.Sprintf("undo-%d", i)})
		d.Edges = append(d.Edges, edge{X1: x(i) + boxW/2, Y1: rowTop + boxH, X2: x(i) + boxW/2, Y2: rowBottom - 2, Class: "dashed"})
	}
	end := func(label string, y int, st saga.Status) node {
		cls := "idle"
		if info.Status == st {
			cls = map[saga.Status]string{saga.StatusSucceeded: "ok", saga.StatusCompensated: "ok", saga.StatusFailed: "bad"}[st]
		}
		return node{X: x(n), Y: y, W: endW, H: boxH, Label: label, Kind: "end", Class: cls, ID: "end-" + label}
	}
	d.Nodes = append(d.Nodes, end("succeeded", rowTop, saga.StatusSucceeded), end("failed", rowBottom, saga.StatusFailed))
	comp := end("compensated", rowBottom, saga.StatusCompensated)
	comp.X = 20
	d.Nodes = append(d.Nodes, comp)
	// The compensations run right to left, each to the next one below it,
	// the last to compensated.
	prevRight := func(i int) int {
		for j := i - 1; j >= 0; j-- {
			if def.Steps[j].Compensation {
				return x(j) + boxW
			}
		}
		return 20 + endW
	}
	for i := n - 1; i >= 0; i-- {
		if def.Steps[i].Compensation {
			d.Edges = append(d.Edges, edge{X1: x(i), Y1: rowBottom + boxH/2, X2: prevRight(i) + 2, Y2: rowBottom + boxH/2, Class: edgeClass(undoOK[i])})
		}
	}
	return d
}

func edgeClass(taken bool) string {
	if taken {
		return "taken"
	}
	return "plain"
}
