package lsmt

// Exported for the external test package (lsmt_test), which imports zfile.
var (
	CheckScenarioA = checkScenarioA
	RefWritableDir = refWritableDir
)

const RefDir = refDir
