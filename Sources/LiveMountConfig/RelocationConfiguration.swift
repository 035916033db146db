// MARK: - Relocation settings and destinations (issue 5)

import Relocation

extension LogicalUnitDefinition {
    /// The forms a primary LUN's URL may take (`relocate_to`, `relocate=`); the pump parses the rest.
    public static let relocationDestinationForms = "/path, file:///path or iscsi://host[:port]/IQN/LUN"

    /// Checks a relocation destination only syntactically: not empty, and `/...`, `file://...` or `iscsi://...`.
    /// The relocation pump parses it fully (and opens it) when the relocation starts.
    public static func relocationDestinationProblem(_ url: String) -> String? {
        if url.isEmpty { return "a destination URL must not be empty (expected \(relocationDestinationForms))" }
        if url.hasPrefix("/") || url.hasPrefix("file://") || url.hasPrefix("iscsi://") { return nil }
        return "\"\(url)\" is not a destination (expected \(relocationDestinationForms))"
    }
}

extension RelocationSettings {
    /// `problems()` split into the key each names and its message (`("region_kib", "3072 is not ...")`).
    func keyedProblems() -> [(key: String, message: String)] {
        problems().map { problem in
            guard let colon = problem.firstIndex(of: ":") else { return (key: "", message: problem) }
            let message = problem[problem.index(after: colon)...].drop { $0 == " " }
            return (key: String(problem[..<colon]), message: String(message))
        }
    }
}
