package coldstart

import (
	"slices"
	"testing"
)

func testCells() []Cell {
	var cells []Cell
	for _, n := range Networks {
		for _, m := range Modes {
			cells = append(cells, Cell{Workload: "python", Mode: m, Network: n})
		}
	}
	return cells
}

func TestScheduleInterleavesEveryCellPerRound(t *testing.T) {
	cells := testCells()
	const runs = 5
	trials := Schedule(cells, runs, 7)
	if len(trials) != len(cells)*runs {
		t.Fatalf("got %d trials, want %d", len(trials), len(cells)*runs)
	}
	for round := range runs {
		chunk := trials[round*len(cells) : (round+1)*len(cells)]
		var got []Cell
		for _, tr := range chunk {
			if tr.Round != round {
				t.Fatalf("trial %+v sits in round %d", tr, round)
			}
			got = append(got, tr.Cell)
		}
		for _, c := range cells {
			if !slices.Contains(got, c) {
				t.Fatalf("round %d lacks cell %+v", round, c)
			}
		}
	}
}

func TestScheduleShufflesAndRepeats(t *testing.T) {
	cells := testCells()
	a, b := Schedule(cells, 4, 1), Schedule(cells, 4, 1)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave different schedules")
	}
	inOrder := 0
	for round := range 4 {
		same := true
		for i, c := range cells {
			if a[round*len(cells)+i].Cell != c {
				same = false
			}
		}
		if same {
			inOrder++
		}
	}
	if inOrder == 4 {
		t.Fatal("no round was shuffled")
	}
	if slices.Equal(a, Schedule(cells, 4, 2)) {
		t.Fatal("different seeds gave the same schedule")
	}
}
