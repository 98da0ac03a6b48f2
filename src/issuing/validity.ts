// How long a unit's code may be redeemed: a campaign's `validFor` (an ISO 8601 duration counted from each
// issue) or `validUntil` (one moment for every unit). Parsed strictly: only durations of a fixed length
// are accepted, so "P7D" means the same number of milliseconds whichever day a unit was issued on, and
// Redis (issue.lua, redeem.lua) compares plain milliseconds on its own clock.

/** Weeks, or days and a time part; no years or months (their length depends on the calendar). */
const DURATION = /^P(?!$)(?:(\d{1,5})W|(?:(\d{1,5})D)?(?:T(?!$)(?:(\d{1,6})H)?(?:(\d{1,8})M)?(?:(\d{1,10})S)?)?)$/

/** At least a minute, at most ten years: anything else is a typing mistake, not a campaign. */
export const MIN_VALID_FOR_MS = 60_000
export const MAX_VALID_FOR_MS = 3650 * 86_400_000

/** Milliseconds of an ISO 8601 duration such as "P7D", "PT30M", "P1DT12H", "P2W"; null when not accepted. */
export function parseValidFor (text: string): number | null {
  const match = DURATION.exec(text)
  if (!match) return null
  const [, weeks, days, hours, minutes, seconds] = match.map((part) => Number(part ?? 0))
  const ms = ((((weeks! * 7 + days!) * 24 + hours!) * 60 + minutes!) * 60 + seconds!) * 1000
  return ms >= MIN_VALID_FOR_MS && ms <= MAX_VALID_FOR_MS ? ms : null
}

/** When a unit issued at `issuedAtMs` expires: null = never. */
export function expiresAt (issuedAtMs: number, { validForMs, validUntil }: { validForMs: number | null, validUntil: Date | null }): Date | null {
  if (validForMs !== null) return new Date(issuedAtMs + validForMs)
  return validUntil
}
