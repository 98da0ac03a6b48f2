// String formats for request validation, stricter than ajv-formats: a value that passes must also be one
// JavaScript parses to the same instant and Postgres stores and gives back unchanged.

/** The instants a date-time may name: 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. */
export const EARLIEST_DATE_TIME = Date.UTC(1970, 0, 1)
export const LATEST_DATE_TIME = Date.UTC(9999, 11, 31, 23, 59, 59, 999)

// RFC 3339 date-time with a mandatory offset ("T" and "Z" in either case), at most nanoseconds.
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:Z|([+-])(\d{2}):(\d{2}))$/i

const daysIn = (year: number, month: number) =>
  month === 2 ? (year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28) : [4, 6, 9, 11].includes(month) ? 30 : 31

/**
 * The `date-time` format. Refuses what ajv-formats lets through and `new Date()` or Postgres then cannot
 * handle: leap seconds (23:59:60 is an Invalid Date in JavaScript), year 0 and other years outside
 * 1970–9999 (also after applying the offset), and days or hours JavaScript would silently roll over.
 */
export function isDateTime (value: string): boolean {
  const m = DATE_TIME.exec(value)
  if (!m) return false
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number]
  const [offsetHours, offsetMinutes] = [Number(m[9] ?? 0), Number(m[10] ?? 0)]
  if (year < 1969 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) ||
    hour > 23 || minute > 59 || second > 59 || offsetHours > 23 || offsetMinutes > 59) return false
  const millis = Number((m[7] ?? '').slice(0, 3).padEnd(3, '0'))
  const instant = Date.UTC(year, month - 1, day, hour, minute, second, millis) - (m[8] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000
  // The handlers use new Date(value): it must name the same instant (offsets other than Z included).
  return instant >= EARLIEST_DATE_TIME && instant <= LATEST_DATE_TIME && Date.parse(value) === instant
}
